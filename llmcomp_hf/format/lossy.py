"""Part 3 of the on-disk format: lossy weights as entropy-coded transform tensors (docs/format.md).

A transformed weight ``X.weight`` is stored as its transform's tensors, each an encoded tensor of
part 2 under ``X.weight.<part>.llmcomp_data|index|header``, plus ``X.weight.llmcomp_transform``:
uint8 compact JSON holding the pipeline meta, the original dtype and shape, the part names and the
effective bits/weight with everything counted. This module never imports transformers.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
import torch

from llmcomp_hf.codec import EncodedTensor, decode, encode
from llmcomp_hf.errors import FormatError, LlmcompError, where
from llmcomp_hf.format.shard import pack, transform_key, unpack, with_file

TRANSFORM_FORMAT = "llmcomp.transform"
TRANSFORM_VERSION = 1
MAX_TRANSFORM_BYTES = 1 << 20
_ITEMSIZE = {"float32": 4, "float16": 2, "bfloat16": 2}

V = TypeVar("V")


def _dumps(obj: Any) -> str:
    return json.dumps(obj, separators=(",", ":"), sort_keys=True, allow_nan=False)


@dataclass
class LossyWeight:
    """One lossy weight as stored: its transform header and one EncodedTensor per transform tensor."""

    name: str
    header: dict[str, Any]
    parts: dict[str, EncodedTensor]

    @property
    def numel(self) -> int:
        return math.prod(self.header["shape"])

    @property
    def original_nbytes(self) -> int:
        """Size of the dense weight it replaces (original dtype)."""
        return self.numel * _ITEMSIZE.get(self.header["dtype"], 4)

    @property
    def nbytes(self) -> int:
        """Stored size: every part's data, index and header, plus the transform header."""
        return sum(e.nbytes for e in self.parts.values()) + len(_dumps(self.header).encode("utf-8"))

    @property
    def bits_per_weight(self) -> float:
        return 8.0 * self.nbytes / max(self.numel, 1)

    def pack(self) -> dict[str, torch.Tensor]:
        """The checkpoint tensors of this weight, keyed by name (docs/format.md part 3)."""
        out: dict[str, torch.Tensor] = {}
        for part, enc in self.parts.items():
            out.update(pack(f"{self.name}.{part}", enc))
        raw = np.frombuffer(_dumps(self.header).encode("utf-8"), dtype=np.uint8).copy()
        out[transform_key(self.name)] = torch.from_numpy(raw)
        return out


def compress_lossy(
    name: str, weight: torch.Tensor, pipeline: Any, coder: str = "huffman", block_size: int = 1 << 16, *,
    importance: torch.Tensor | None = None, hessian: torch.Tensor | None = None,
    row_importance: torch.Tensor | None = None, calibration: dict[str, Any] | None = None,
) -> tuple[LossyWeight, torch.Tensor]:
    """Apply ``pipeline`` (a Transform) to ``weight`` and entropy-code every resulting tensor.

    Returns the stored form and the reconstruction, computed exactly as :func:`decode_lossy` will
    (same tensors, same JSON-round-tripped meta), so the weight in memory equals a reload bit for bit.
    Raises LlmcompError naming the tensor when the stages do not fit it (shape, values).
    ``importance`` (per input channel), ``hessian`` (input second moment) and ``row_importance`` (per output
    channel), from a calibration file, go to ``pipeline.apply``; ``calibration``
    (e.g. the file's SHA-256 and number of texts) is recorded in the header under ``"calibration"``.
    """
    w = weight.detach().cpu()
    try:
        extra = {k: v for k, v in (("hessian", hessian), ("row_importance", row_importance)) if v is not None}
        t = pipeline.apply(w, importance=importance, measure=False, **extra)
    except ValueError as exc:
        raise LlmcompError(
            f"cannot apply the lossy stages{where(name)}: {exc}. Exclude it with modules_to_not_convert or "
            "change the stages"
        ) from exc
    tensors = {k: v.detach().cpu().contiguous() for k, v in t.tensors.items()}
    try:
        meta = json.loads(_dumps(t.meta))
    except (TypeError, ValueError) as exc:
        raise LlmcompError(f"transform meta is not JSON-serialisable{where(name)}: {exc}") from exc
    recon = _reconstruct(name, tensors, meta, None)
    parts = {k: encode(v, coder=coder, block_size=block_size, name=f"{name}.{k}") for k, v in tensors.items()}
    sq_norm = float(w.to(torch.float64).square().sum())
    sq_err = float((w.to(torch.float64) - recon.to(torch.float64)).square().sum())
    header: dict[str, Any] = {
        "format": TRANSFORM_FORMAT,
        "version": TRANSFORM_VERSION,
        "dtype": str(w.dtype).removeprefix("torch."),
        "shape": list(w.shape),
        "parts": sorted(parts),
        "meta": meta,
        "rel_mse": sq_err / sq_norm if sq_norm > 0 else 0.0,
    }
    if calibration is not None:
        header["calibration"] = dict(calibration)
    lw = LossyWeight(name, header, parts)
    _settle_size(lw)
    return lw, recon.to(weight.device)


def _settle_size(lw: LossyWeight) -> None:
    """Write ``stored_bytes`` and ``bits_per_weight`` into the header, counting the header itself."""
    parts_bytes = sum(e.nbytes for e in lw.parts.values())
    for _ in range(8):  # the header's own length depends on the figures it holds: iterate to a fixed point
        stored = parts_bytes + len(_dumps(lw.header).encode("utf-8"))
        figures = {"stored_bytes": stored, "bits_per_weight": round(8.0 * stored / max(lw.numel, 1), 4)}
        if all(lw.header.get(k) == v for k, v in figures.items()):
            return
        lw.header.update(figures)


def read_header(name: str, tensor: torch.Tensor, file: str | None = None) -> dict[str, Any]:
    """Parse and check the ``X.weight.llmcomp_transform`` tensor; FormatError naming tensor and file."""
    key = transform_key(name)
    if tensor.dtype != torch.uint8 or tensor.dim() != 1 or tensor.numel() > MAX_TRANSFORM_BYTES:
        raise FormatError(
            f"{key} must be 1-D uint8 JSON of at most {MAX_TRANSFORM_BYTES} bytes, got {tensor.dtype} "
            f"{list(tensor.shape)}{where(name, file)}; the shard is corrupted: re-download it"
        )
    try:
        header = json.loads(tensor.detach().cpu().contiguous().numpy().tobytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise FormatError(f"{key} is not valid JSON{where(name, file)}: {exc}; re-download the shard") from exc
    if not isinstance(header, dict) or header.get("format") != TRANSFORM_FORMAT:
        raise FormatError(f"{key} is not an {TRANSFORM_FORMAT!r} header{where(name, file)}")
    if header.get("version") != TRANSFORM_VERSION:
        raise FormatError(
            f"unsupported lossy transform version {header.get('version')!r}{where(name, file)}; this llmcomp-hf "
            f"reads version {TRANSFORM_VERSION}: upgrade llmcomp-hf (pip install -U llmcomp-hf)"
        )
    for field, kind in (("dtype", str), ("shape", list), ("parts", list), ("meta", dict)):
        if not isinstance(header.get(field), kind):
            raise FormatError(f"{key} lacks a valid {field!r} entry{where(name, file)}; the shard is corrupted")
    return header


def decode_lossy(
    name: str,
    transform: torch.Tensor,
    parts: Mapping[str, Mapping[str, torch.Tensor | None]],
    file: str | None = None,
    verify: bool = True,
) -> tuple[torch.Tensor, LossyWeight]:
    """Decode every part of lossy weight ``name`` and reconstruct it (original dtype and shape).

    ``parts`` maps each part name (``weight.codes``...) to its ``{"data", "index", "header"}`` tensors.
    Returns the weight and the stored form (kept so a re-save writes the same bytes).
    """
    header = read_header(name, transform, file)
    names = header["parts"]
    missing, extra = sorted(set(names) - set(parts)), sorted(set(parts) - set(names))
    if missing or extra:
        raise FormatError(
            f"lossy weight parts do not match its transform header (missing {missing}, unexpected {extra})"
            f"{where(name, file)}; a shard is missing or mixed from another checkpoint: re-download it"
        )
    encoded = {p: unpack(f"{name}.{p}", parts[p], file) for p in names}
    try:
        tensors = {p: decode(enc, verify=verify) for p, enc in encoded.items()}
    except FormatError as exc:
        raise with_file(exc, name, file) from exc
    weight = _reconstruct(name, tensors, header["meta"], file)
    if list(weight.shape) != header["shape"] or str(weight.dtype).removeprefix("torch.") != header["dtype"]:
        raise FormatError(f"reconstructed weight does not match its header's shape/dtype{where(name, file)}")
    return weight, LossyWeight(name, header, encoded)


def _reconstruct(name: str, tensors: dict[str, torch.Tensor], meta: dict[str, Any], file: str | None) -> torch.Tensor:
    from llmcomp_hf.transforms import reconstruct

    try:
        return reconstruct(tensors, meta)
    except (ValueError, KeyError, TypeError, RuntimeError, IndexError, AttributeError, ArithmeticError) as exc:
        raise FormatError(
            f"cannot reconstruct lossy weight{where(name, file)}: {type(exc).__name__}: {exc}. The transform "
            "header or parts are corrupted, or were written by a newer llmcomp-hf (pip install -U llmcomp-hf)"
        ) from exc


def claim_parts(groups: dict[str, dict[str, V]], lossy: Mapping[str, Any]) -> dict[str, dict[str, dict[str, V]]]:
    """Move every encoded group named ``<lossy name>.<part>`` out of ``groups``: ``{name: {part: group}}``."""
    out: dict[str, dict[str, dict[str, V]]] = {}
    if not lossy:
        return out
    for base in list(groups):
        pos = base.find(".")
        while pos != -1:
            owner = base[:pos]
            if owner in lossy:
                out.setdefault(owner, {})[base[pos + 1:]] = groups.pop(base)
                break
            pos = base.find(".", pos + 1)
    return out


__all__ = [
    "TRANSFORM_FORMAT",
    "TRANSFORM_VERSION",
    "LossyWeight",
    "claim_parts",
    "compress_lossy",
    "decode_lossy",
    "read_header",
]
