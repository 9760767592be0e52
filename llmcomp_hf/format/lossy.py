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
from llmcomp_hf.errors import FormatError, LlmcompError, shown, where
from llmcomp_hf.codec.api import MAX_OUTPUT_BYTES
from llmcomp_hf.codec.encoded import MAX_NUMEL
from llmcomp_hf.format.shard import pack, parse_json_tensor, transform_key, unpack, with_file

TRANSFORM_FORMAT = "llmcomp.transform"
TRANSFORM_VERSION = 1
MAX_TRANSFORM_BYTES = 1 << 20
# Bound on a lossy weight's decoded parts: generous for every stage (low-rank factors of the largest
# rank, fp32, hold at most 2 x 4 bytes a weight element; codes, residual codes and scales a few more).
PART_BYTES_PER_WEIGHT = 32
PART_BYTES_SLACK = 1 << 20
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
    """Parse and check the ``X.weight.llmcomp_transform`` tensor; FormatError naming tensor and file.

    The one check of a transform header: every field decoding relies on has its type and range.
    """
    header = parse_json_tensor(tensor, transform_key(name), MAX_TRANSFORM_BYTES, where(name, file))
    validate_transform_header(header, name, file)
    return header


def validate_transform_header(header: dict[str, Any], name: str, file: str | None = None) -> None:
    """The one check of a parsed transform header (docs/format.md part 3); FormatError naming tensor and file."""
    key, at = transform_key(name), where(name, file)
    if header.get("format") != TRANSFORM_FORMAT:
        raise FormatError(f"{key} is not an {TRANSFORM_FORMAT!r} header{at}")
    version = header.get("version")
    if type(version) is not int or version != TRANSFORM_VERSION:
        raise FormatError(
            f"unsupported lossy transform version {shown(version)}{at}; this llmcomp-hf "
            f"reads version {TRANSFORM_VERSION}: upgrade llmcomp-hf (pip install -U llmcomp-hf)"
        )
    for field, kind in (("dtype", str), ("shape", list), ("parts", list), ("meta", dict)):
        if not isinstance(header.get(field), kind):
            raise FormatError(f"{key} lacks a valid {field!r} entry{at}; the shard is corrupted: re-download it")
    shape, parts = header["shape"], header["parts"]
    if header["dtype"] not in _ITEMSIZE:
        raise FormatError(f"{key}: dtype {shown(header['dtype'])} is not one of {sorted(_ITEMSIZE)}{at}; the shard is corrupted")
    if not _is_shape(shape):
        raise FormatError(f"{key}: shape {shown(shape)} is not a list of at most 16 non-negative ints{at}; the shard is corrupted")
    if not all(isinstance(p, str) and p for p in parts) or len(set(parts)) != len(parts):
        raise FormatError(f"{key}: parts must be distinct non-empty names{at}; the shard is corrupted")
    for field in ("stored_bytes", "bits_per_weight"):  # figures summed by decompress for its card
        value = header.get(field)
        if value is not None and (type(value) not in (int, float) or not value >= 0):
            raise FormatError(f"{key}: {field} {shown(value)} is not a non-negative number{at}; the shard is corrupted")
    meta = header["meta"]
    if meta.get("shape") != shape or meta.get("dtype") != header["dtype"]:
        raise FormatError(f"{key}: meta shape/dtype differ from the header's {header['dtype']} {shape}{at}; "
                          "the shard is corrupted: re-download it")


def _is_shape(shape: Any) -> bool:
    return (isinstance(shape, list) and len(shape) <= 16
            and all(type(d) is int and 0 <= d <= MAX_NUMEL for d in shape) and math.prod(shape) <= MAX_NUMEL)


def check_parts(name: str, header: dict[str, Any], encoded: Mapping[str, EncodedTensor], file: str | None = None) -> None:
    """Refuse parts that could not come from a weight of the header's shape, before decoding them.

    Their decoded sizes together are bounded (``PART_BYTES_PER_WEIGHT`` bytes a weight element, plus
    ``PART_BYTES_SLACK``), and low-rank factors must multiply to the weight's ``[m, n]`` (``m`` its first
    dim, ``n`` the product of the rest) with a rank of at most ``min(m, n)``: a few kilobytes of factors
    could otherwise declare a matmul of gigabytes.
    """
    at, shape = where(name, file), header["shape"]
    numel = math.prod(shape)
    total = sum(enc.original_nbytes for enc in encoded.values())
    budget = PART_BYTES_PER_WEIGHT * numel + PART_BYTES_SLACK
    if total > budget:
        raise FormatError(f"lossy weight parts declare {total} decoded bytes for a {shape} weight (at most {budget})"
                          f"{at}; the shard is damaged or hostile: re-download it or re-compress the model")
    lowrank = _lowrank_meta(header["meta"])
    if lowrank is None:
        return
    m, n = (shape[0], math.prod(shape[1:])) if shape else (1, 1)
    left, right = (_factor_shape(key, encoded, header["meta"]) for key in ("left", "right"))
    if (left is None or right is None or len(left) != 2 or len(right) != 2 or left[0] != m or right[1] != n
            or left[1] != right[0] or left[1] > min(m, n)):
        raise FormatError(f"low-rank factors {left} x {right} do not multiply to the weight's [{m}, {n}]{at}; "
                          "the shard is damaged or hostile: re-download it or re-compress the model")


def _lowrank_meta(meta: dict[str, Any]) -> Any:
    stages = meta.get("stages")
    if isinstance(stages, dict):
        return stages.get("lowrank")
    return meta if meta.get("transform") == "lowrank" else None


def _factor_shape(key: str, encoded: Mapping[str, EncodedTensor], meta: dict[str, Any]) -> list[int] | None:
    """The shape factor ``key`` will have: its part's, or the shape its quantizer's meta reshapes it to."""
    if key in encoded:
        return list(encoded[key].shape)
    stages = meta.get("stages")
    quant = stages.get("quantize") if isinstance(stages, dict) else None
    qmeta = quant.get(key) if isinstance(quant, dict) else None
    shape = qmeta.get("shape") if isinstance(qmeta, dict) else None
    return shape if _is_shape(shape) else None


def decode_lossy(
    name: str,
    transform: torch.Tensor,
    parts: Mapping[str, Mapping[str, torch.Tensor | None]],
    file: str | None = None,
    verify: bool = True,
    *,
    max_output_bytes: int | None = MAX_OUTPUT_BYTES,
) -> tuple[torch.Tensor, LossyWeight]:
    """Decode every part of lossy weight ``name`` and reconstruct it (original dtype and shape).

    ``parts`` maps each part name (``weight.codes``...) to its ``{"data", "index", "header"}`` tensors.
    Returns the weight and the stored form (kept so a re-save writes the same bytes). The parts'
    declared sizes are checked against the header's shape before any is decoded (``check_parts``);
    ``max_output_bytes`` bounds each part's decode as in ``llmcomp_hf.codec.decode``.
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
    check_parts(name, header, encoded, file)
    try:
        tensors = {p: decode(enc, verify=verify, max_output_bytes=max_output_bytes) for p, enc in encoded.items()}
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
    except (ValueError, KeyError, TypeError, RuntimeError, IndexError, AttributeError, ArithmeticError, RecursionError) as exc:
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
    "check_parts",
    "claim_parts",
    "compress_lossy",
    "decode_lossy",
    "read_header",
    "validate_transform_header",
]
