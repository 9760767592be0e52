"""Streaming decompression: an llmcomp checkpoint back to plain safetensors, tensor by tensor.

Lossy weights (docs/format.md part 3) become their reconstruction, made by ``format.lossy.decode_lossy``
(the function ``from_pretrained`` runs), so the output holds the weights a load of the checkpoint gives.
"""

from __future__ import annotations

import math
import shutil
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import numpy as np

from llmcomp_hf.codec.api import MAX_OUTPUT_BYTES
from llmcomp_hf.codec.encoded import load_json_object, validate_header
from llmcomp_hf.errors import FormatError, where
from llmcomp_hf.format.safetensors_header import NAME_TO_CODE
from llmcomp_hf.format.shard import (
    PARTS,
    check_plain_file,
    part_key,
    split_key,
    transform_base,
    transform_key,
    unpack,
    with_file,
)
from llmcomp_hf.stream.files import CARD_NAME, copy_side_files, plain_config
from llmcomp_hf.stream.reader import BufferPool, ShardReader
from llmcomp_hf.stream.records import TensorRecord
from llmcomp_hf.stream.source import (
    CONFIG_NAME,
    INDEX_NAME,
    ShardInfo,
    open_shard,
    read_checkpoint,
    read_config,
    tensor_bytes,
    write_json,
)
from llmcomp_hf.stream.writer import StreamingShardWriter, dtype_itemsize


class CompressedMap:
    """Where the parts of every compressed tensor live, and their decoded dtype and shape.

    Lossy weights: ``transforms`` maps each to the shard holding its transform header (where its
    reconstruction goes), ``lossy_parts`` to its encoded tensors (``{part: base}``), ``lossy_headers``
    to its parsed transform header.
    """

    def __init__(self, shards: list[ShardInfo], max_output_bytes: int | None = MAX_OUTPUT_BYTES) -> None:
        """``max_output_bytes`` bounds each decoded tensor (None: no bound), checked before allocating."""
        from llmcomp_hf.format.lossy import claim_parts, read_header

        self.max_output_bytes = max_output_bytes
        self.files: dict[str, dict[str, ShardInfo]] = {}
        self.transforms: dict[str, ShardInfo] = {}
        for shard in shards:
            for t in shard.tensors:
                base, part = split_key(t.name)
                if part is not None:
                    self.files.setdefault(base, {})[part] = shard
                elif transform_base(t.name) is not None:
                    self.transforms[transform_base(t.name)] = shard
        claimed = claim_parts({b: b for b in self.files}, self.transforms)
        self.lossy_parts: dict[str, dict[str, str]] = {n: claimed.get(n, {}) for n in self.transforms}
        self.owner = {base: name for name, parts in self.lossy_parts.items() for base in parts.values()}
        for base in self.files:  # every part present, also for a tensor whose data part is gone (it would be skipped)
            self.home(base)
        self.headers: dict[str, dict[str, Any]] = {}
        self.lossy_headers: dict[str, dict[str, Any]] = {}
        for shard in shards:
            bases = [b for b, p in self.files.items() if p.get("header") is shard]
            names = [n for n, s in self.transforms.items() if s is shard]
            if bases or names:
                with open_shard(shard.path) as h:
                    for base in bases:
                        self.headers[base] = _header_json(base, h.get_tensor(part_key(base, "header")), str(shard.path))
                    for name in names:
                        self.lossy_headers[name] = read_header(name, h.get_tensor(transform_key(name)), str(shard.path))

    def home(self, base: str) -> ShardInfo:
        """The shard the decoded tensor goes to: the one holding its data part."""
        parts = self.files[base]
        missing = [p for p in PARTS if p not in parts]
        if missing:
            shard = next(iter(parts.values()))
            raise FormatError(
                f"compressed tensor is missing its {missing} part(s){where(base, str(shard.path))}; a shard is "
                "missing or truncated: re-download the checkpoint"
            )
        return parts["data"]

    def read(self, base: str, handles: ShardHandles, bufs: BufferPool) -> tuple[Any, list[np.ndarray]]:
        """(validated EncodedTensor of ``base``, buffers holding its parts); parts may lie in several shards."""
        parts, held = {}, []
        for part, shard in self.files[base].items():
            parts[part], buf = handles.get(shard).read(part_key(base, part), bufs)
            held.append(buf)
        try:
            return unpack(base, parts, str(self.home(base).path)), held
        except BaseException:
            for buf in held:
                bufs.give(buf)
            raise


class ShardHandles:
    """Open ShardReaders, one per file, closed together."""

    def __init__(self, stack: ExitStack) -> None:
        self._stack, self._open = stack, {}

    def get(self, shard: ShardInfo) -> ShardReader:
        if shard.path not in self._open:
            self._open[shard.path] = self._stack.enter_context(ShardReader(shard))
        return self._open[shard.path]


def decode_checked(enc: Any, out: Any, file: str) -> Any:
    """Decode into ``out`` with checksum verification, one codec thread; errors name the tensor and file."""
    from llmcomp_hf.codec import decode

    try:
        return decode(enc, out=out, threads=1, verify=True)
    except FormatError as exc:
        raise with_file(exc, enc.name, file) from exc


def _out_tensor(header: dict[str, Any], bufs: BufferPool, limit: int | None, name: str, file: str
                ) -> tuple[Any, np.ndarray | None]:
    """A contiguous tensor of the header's dtype and shape over a pooled buffer (and that buffer).

    Refused before allocating when it would exceed ``limit`` bytes (a few stored bytes can declare any size).
    """
    import torch

    dtype, shape = getattr(torch, str(header["dtype"])), [int(d) for d in header["shape"]]
    nbytes = math.prod(shape) * torch.empty(0, dtype=dtype).element_size()
    if limit is not None and nbytes > limit:
        raise FormatError(
            f"tensor declares {nbytes:,} decoded bytes, over the limit of {limit:,}{where(name, file)}; if the "
            "checkpoint is trusted and really that large, raise the limit (--max-output / max_output_bytes=)"
        )
    if nbytes == 0:
        return torch.empty(shape, dtype=dtype), None
    buf = bufs.take(nbytes)
    return torch.from_numpy(buf[:nbytes]).view(dtype).reshape(shape), buf


def iter_decoded(
    shard: ShardInfo, cmap: CompressedMap, pool: ThreadPoolExecutor, workers: int, handles: ShardHandles,
    bufs: BufferPool, plain: bool = True, reconstruct: bool = False,
) -> Iterator[tuple[str, Any, bool]]:
    """(name, tensor, was_compressed) for every tensor homed in ``shard``, decoded ``workers`` at a time.

    Decoded tensors are torch tensors; plain ones are their raw bytes (a uint8 numpy array, any dtype).
    Either lives in a pooled buffer: it is valid until the next item is requested.
    ``plain=False`` skips the tensors stored plain (they are not read at all). ``reconstruct=True``
    yields each lossy weight once, reconstructed, instead of its transform header and encoded parts.
    """
    pending: deque[tuple[str, Future, list[np.ndarray], np.ndarray | None]] = deque()

    def finish() -> Iterator[tuple[str, Any, bool]]:
        name, fut, held, out_buf = pending.popleft()
        tensor = fut.result()
        for buf in held:
            bufs.give(buf)
        yield name, tensor, True
        if out_buf is not None:
            bufs.give(out_buf)

    own = handles.get(shard)
    for t in shard.tensors:
        base, part = split_key(t.name)
        lossy_name = transform_base(t.name) if reconstruct else None
        if lossy_name is not None:
            transform, held = _read_lossy(lossy_name, cmap, handles, bufs)
            fut = pool.submit(_reconstruct, lossy_name, transform, held, str(shard.path), cmap.max_output_bytes)
            pending.append((lossy_name, fut, [buf for _, buf in held.values()], None))
            while len(pending) > workers:
                yield from finish()
            continue
        if reconstruct and cmap.owner.get(base) is not None:
            continue  # an encoded part of a lossy weight: decoded with its transform header
        if part is None:
            if not plain:
                continue
            while pending:
                yield from finish()
            buf = bufs.take(own.nbytes(t.name))
            yield t.name, own.read_into(t.name, buf), False
            bufs.give(buf)
            continue
        if part != "data":
            continue
        cmap.home(base)  # checks every part is present
        enc, held = cmap.read(base, handles, bufs)
        try:
            out, out_buf = _out_tensor(enc.header, bufs, cmap.max_output_bytes, base, str(shard.path))
        except BaseException:
            for buf in held:
                bufs.give(buf)
            raise
        pending.append((base, pool.submit(decode_checked, enc, out, str(shard.path)), held, out_buf))
        while len(pending) > workers:
            yield from finish()
    while pending:
        yield from finish()


def _read_lossy(
    name: str, cmap: CompressedMap, handles: ShardHandles, bufs: BufferPool
) -> tuple[Any, dict[str, tuple[Any, np.ndarray]]]:
    """(transform header tensor, ``{key: (tensor, pooled buffer)}`` of its parts), read on the calling thread."""
    held: dict[str, tuple[Any, np.ndarray]] = {}
    try:
        transform, buf = handles.get(cmap.transforms[name]).read(transform_key(name), bufs)
        held[transform_key(name)] = (transform, buf)
        for base in cmap.lossy_parts[name].values():
            cmap.home(base)  # checks every part is present
            for part, shard in cmap.files[base].items():
                held[part_key(base, part)] = handles.get(shard).read(part_key(base, part), bufs)
    except BaseException:
        for _, buf in held.values():
            bufs.give(buf)
        raise
    return transform, held


def _reconstruct(name: str, transform: Any, held: dict[str, tuple[Any, np.ndarray]], file: str,
                 max_output_bytes: int | None = MAX_OUTPUT_BYTES) -> Any:
    """The lossy weight ``name`` decoded (checksums verified) and reconstructed, as ``from_pretrained`` does."""
    from llmcomp_hf.format.lossy import decode_lossy

    parts: dict[str, dict[str, Any]] = {}
    for key, (tensor, _) in held.items():
        base, part = split_key(key)
        if part is not None:
            parts.setdefault(base[len(name) + 1:], {})[part] = tensor
    weight, _ = decode_lossy(name, transform, parts, file, verify=True, max_output_bytes=max_output_bytes)
    return weight


def decompress_into(
    src: Path, out: Path, workers: int = 1, progress: Callable[[str, int, int], None] | None = None,
    max_output_bytes: int | None = MAX_OUTPUT_BYTES,
) -> list:
    """Write the plain checkpoint of ``src`` into the (empty) folder ``out``; return TensorRecords."""
    from llmcomp_hf.card import is_llmcomp_card, read_card
    from llmcomp_hf.card_merge import is_merged, unmerge_card

    shards, sharded = read_checkpoint(src)
    cmap = CompressedMap(shards, max_output_bytes)
    plan: dict[str, list[tuple[str, str, list[int]]]] = {s.rel: [] for s in shards}
    for shard in shards:
        for t in shard.tensors:
            base, part = split_key(t.name)
            lossy_name = transform_base(t.name)
            if lossy_name is not None:
                h = cmap.lossy_headers[lossy_name]
                plan[shard.rel].append((lossy_name, _code(lossy_name, h, str(shard.path)), list(h["shape"])))
            elif cmap.owner.get(base) is not None:
                continue
            elif part is None:
                plan[shard.rel].append((t.name, t.dtype, list(t.shape)))
            elif part == "data":
                h = cmap.headers.get(base) or {}
                if cmap.home(base) is shard:
                    plan[shard.rel].append((base, _code(base, h, str(shard.path)), list(h.get("shape", []))))
    total = sum(_nbytes(d, s) for entries in plan.values() for _, d, s in entries)
    done, records, weight_map = 0, [], {}
    bufs = BufferPool(keep=2 * (workers + 1))  # per tensor in flight: its data part and its output
    with ExitStack() as stack, ThreadPoolExecutor(workers) as pool:
        handles = ShardHandles(stack)
        for shard in shards:
            if not plan[shard.rel]:  # only holds parts of tensors homed elsewhere: no plain shard needed
                continue
            check_plain_file(str(shard.path))  # plain tensors copied as they are: their metadata checksums first
            dest = out / shard.rel
            dest.parent.mkdir(parents=True, exist_ok=True)
            writer = StreamingShardWriter(str(dest), {"format": "pt"})
            specs = {name: (dtype, shape) for name, dtype, shape in plan[shard.rel]}
            for name, (dtype, shape) in specs.items():
                writer.add_fixed(name, dtype, shape)
            writer.start()
            try:
                for name, tensor, compressed in iter_decoded(shard, cmap, pool, workers, handles, bufs,
                                                             reconstruct=True):
                    writer.write_fixed(name, tensor_bytes(tensor))
                    dtype, shape = specs[name]
                    size = _nbytes(dtype, shape)
                    records.append(TensorRecord(name, shard.rel, dtype, tuple(shape), size, size, compressed,
                                                lossy=name in cmap.transforms))
                    weight_map[name] = shard.rel
                    done += size
                    if progress is not None:
                        progress("decompress", done, total)
                writer.finish()
            except BaseException:
                writer.abort()
                raise
    if sharded:
        write_json(out / INDEX_NAME, {"metadata": {"total_size": total}, "weight_map": weight_map})
    copy_side_files(src, out, skip={CONFIG_NAME, CARD_NAME})
    cfg = read_config(src)
    card = read_card(src)
    if cmap.transforms:
        from llmcomp_hf.stream.recon import write_reconstruction_files

        write_reconstruction_files(out, cfg, card, cmap.lossy_headers)
        return records
    if cfg is not None:
        write_json(out / CONFIG_NAME, plain_config(cfg))
    if card is not None and not is_llmcomp_card(card):  # someone else's card: theirs without our merged facts
        text = (src / CARD_NAME).read_text(encoding="utf-8")
        if is_merged(text):
            (out / CARD_NAME).write_text(unmerge_card(text), encoding="utf-8")
        else:
            shutil.copyfile(src / CARD_NAME, out / CARD_NAME)
    return records


def _header_json(base: str, tensor: Any, file: str) -> dict[str, Any]:
    # the shared parser and validator: a deep nesting, or a field of the wrong type, is damage too
    header = load_json_object(tensor_bytes(tensor).tobytes(), "header of compressed tensor", where(base, file))
    try:
        validate_header(header, base)
    except FormatError as exc:
        raise with_file(exc, base, file) from None
    return header


def _code(base: str, header: dict[str, Any], file: str) -> str:
    code = NAME_TO_CODE.get(str(header.get("dtype")))
    if code is None:
        raise FormatError(f"unsupported dtype {header.get('dtype')!r} in header{where(base, file)}; upgrade llmcomp-hf")
    return code


def _nbytes(code: str, shape: list[int]) -> int:
    n = 1
    for d in shape:
        n *= int(d)
    return n * dtype_itemsize(code)
