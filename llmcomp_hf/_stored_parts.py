"""Empty ``EncodedWeight`` placeholders sized from a checkpoint's stored parts, for the loader to fill."""

from __future__ import annotations

from typing import Any

import torch

from llmcomp_hf.errors import FormatError, where
from llmcomp_hf.format.safetensors_file import SafetensorsFile
from llmcomp_hf.format.shard import part_key, read_tensor_header
from llmcomp_hf.modules import EncodedWeight


class StoredParts:
    """The shards of one checkpoint, opened on first use: ``part_files`` maps each stored part to its shard
    (a weight's data, index and header may lie in different shards). Use as a context manager."""

    def __init__(self, part_files: dict[str, str]) -> None:
        self.part_files = part_files
        self._handles: dict[str, SafetensorsFile] = {}

    def __enter__(self) -> StoredParts:
        return self

    def __exit__(self, *exc: Any) -> None:
        for handle in self._handles.values():
            handle.close()
        self._handles.clear()

    def _handle(self, key: str) -> SafetensorsFile:
        file = self.part_files[key]
        if file not in self._handles:
            self._handles[file] = SafetensorsFile(file)
        return self._handles[file]

    def _length(self, key: str) -> int:
        shape = self._handle(key).entry(key).shape
        if len(shape) != 1:
            raise FormatError(f"a stored part must be 1-D, got shape {list(shape)}"
                              f"{where(key, self.part_files[key])}; the shard is damaged: re-download it")
        return shape[0]

    def placeholder(self, stored: str, dtype: torch.dtype) -> EncodedWeight:
        """An empty EncodedWeight for stored weight ``stored``, computing in ``dtype``.

        Buffer sizes come from the shard headers, so the loader fills them like any other tensor. A dtype
        other than the stored one (``dtype=torch.float32`` for a bf16 checkpoint) is applied after each
        decode, as a decoded load casts the weight once.
        """
        header_key = part_key(stored, "header")
        header = read_tensor_header(stored, self._handle(header_key).get_tensor(header_key), self.part_files[header_key])
        sizes = tuple(self._length(part_key(stored, p)) for p in ("data", "index", "header"))
        placeholder = EncodedWeight.placeholder(stored, sizes)
        if header["dtype"] != str(dtype).removeprefix("torch."):
            placeholder.casts = (dtype,)
        return placeholder


__all__ = ["StoredParts"]
