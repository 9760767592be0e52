"""Inspect and verify llmcomp checkpoints, compare a written checkpoint with its source, card figures."""

from __future__ import annotations

import math
import os
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from llmcomp_hf.codec.api import MAX_OUTPUT_BYTES
from llmcomp_hf.errors import FormatError, where
from llmcomp_hf.format.safetensors_header import CODE_TO_NAME, NAME_TO_CODE
from llmcomp_hf.format.shard import check_metadata, check_plain_file, split_key
from llmcomp_hf.stream.expand import (
    CompressedMap,
    ShardHandles,
    iter_decoded,
)
from llmcomp_hf.stream.reader import BufferPool, ShardReader
from llmcomp_hf.stream.source import (
    INDEX_NAME,
    ShardInfo,
    VerificationError,
    read_checkpoint,
    read_config,
    tensor_bytes,
)
from llmcomp_hf.stream.writer import dtype_itemsize


@dataclass
class TensorRow:
    """One stored tensor as ``llmcomp inspect`` shows it."""

    name: str
    file: str
    dtype: str
    shape: list[int]
    compressed: bool
    coder: str | None
    stages: list[str]
    original_bytes: int
    stored_bytes: int
    bound_bits: float | None = None  # order-0 entropy of the byte planes, one table per tensor
    rel_mse: float | None = None  # lossy weights: measured ||W - W'||^2 / ||W||^2 (transform header)

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def ratio(self) -> float:
        return self.stored_bytes / self.original_bytes if self.original_bytes else 1.0

    @property
    def bits_per_weight(self) -> float:
        return 8.0 * self.stored_bytes / self.numel if self.numel else 0.0

    def to_dict(self) -> dict[str, Any]:
        out = {k: getattr(self, k) for k in self.__dataclass_fields__}
        out.update(numel=self.numel, ratio=self.ratio, bits_per_weight=self.bits_per_weight)
        return out


@dataclass
class Report:
    """``inspect``/``verify`` result: rows, totals, and the first failure for verify."""

    path: str
    rows: list[TensorRow] = field(default_factory=list)
    config: dict[str, Any] | None = None
    error: str | None = None
    seconds: float = 0.0
    plain_verified: int = 0  # verify: plain tensors whose metadata checksum was checked

    def totals(self) -> dict[str, Any]:
        comp = [r for r in self.rows if r.compressed]
        weights = sum(r.numel for r in comp)
        stored_w = sum(r.stored_bytes for r in comp)
        bounded = [r for r in comp if r.bound_bits is not None]
        orig, stored = sum(r.original_bytes for r in self.rows), sum(r.stored_bytes for r in self.rows)
        return {
            "tensors": len(self.rows),
            "compressed_tensors": len(comp),
            "original_bytes": orig,
            "stored_bytes": stored,
            "ratio": stored / orig if orig else 1.0,
            "bits_per_weight": 8.0 * stored_w / weights if weights else None,
            "bound_bits_per_weight": (
                sum(r.bound_bits * r.numel for r in bounded) / sum(r.numel for r in bounded) if bounded else None
            ),
        }


def order0_bits(tensor: Any) -> float:
    """Order-0 entropy (bits per element) of the codec's byte planes (docs/format.md), one table per plane."""
    u8 = tensor_bytes(tensor)
    name = str(tensor.dtype).removeprefix("torch.")
    if name in ("bfloat16", "float16"):
        w = u8.view(np.uint16)
        planes = [((w >> 7) & 0xFF).astype(np.uint8), (((w >> 8) & 0x80) | (w & 0x7F)).astype(np.uint8)]
    elif name == "float32":
        w = u8.view(np.uint32)
        planes = [((w >> 23) & 0xFF), ((w >> 24) & 0x80) | ((w >> 16) & 0x7F), (w >> 8) & 0xFF, w & 0xFF]
        planes = [p.astype(np.uint8) for p in planes]
    else:
        size = tensor.element_size()
        planes = [u8.reshape(-1, size)[:, j] for j in range(size)]
    bits = 0.0
    for plane in planes:
        counts = np.bincount(plane, minlength=256)
        p = counts[counts > 0] / plane.size
        bits += float(-(p * np.log2(p)).sum()) if plane.size else 0.0
    return bits


def _stages(config: dict[str, Any] | None) -> list[str]:
    from llmcomp_hf.card import stage_names

    qc = (config or {}).get("quantization_config")
    stages = qc.get("stages") if isinstance(qc, dict) else None
    if stages is not None and not isinstance(stages, list):
        raise FormatError(f"config.json's quantization_config 'stages' must be a list, got {str(stages)[:60]!r}; "
                          "restore config.json from the original checkpoint")
    return stage_names(stages)


def _rows(shards: list[ShardInfo], cmap: CompressedMap, config: dict[str, Any] | None) -> dict[str, TensorRow]:
    stages = _stages(config)
    rows: dict[str, TensorRow] = {}
    for shard in shards:
        for t in shard.tensors:
            base, part = split_key(t.name)
            size = t.numel * dtype_itemsize(t.dtype, t.name)
            if part is None:
                rows[t.name] = TensorRow(t.name, shard.rel, CODE_TO_NAME.get(t.dtype, t.dtype), list(t.shape),
                                         False, None, [], size, size)
                continue
            row = rows.get(base)
            if row is None:
                h = cmap.headers.get(base, {})
                shape = [int(d) for d in h.get("shape", [])]
                dname = str(h.get("dtype", "?"))
                code = NAME_TO_CODE.get(dname)
                orig = math.prod(shape) * (dtype_itemsize(code) if code else 0)
                row = rows[base] = TensorRow(base, cmap.home(base).rel, dname, shape, True, h.get("coder"),
                                             stages, orig, 0)
            row.stored_bytes += size
    _fold_lossy(rows, cmap, stages)
    return rows


def _fold_lossy(rows: dict[str, TensorRow], cmap: CompressedMap, stages: list[str]) -> None:
    """One row per lossy weight (the weight it replaces, every stored byte counted) instead of one row
    for its transform header and one per encoded part (codes, scales...)."""
    from llmcomp_hf.format.shard import transform_key

    for name, header in cmap.lossy_headers.items():
        members = [transform_key(name), *cmap.lossy_parts.get(name, {}).values()]
        stored = sum(rows.pop(m).stored_bytes for m in members if m in rows)
        shape = [int(d) for d in header["shape"]]
        code = NAME_TO_CODE.get(str(header["dtype"]))
        coders = {h.get("coder") for b in cmap.lossy_parts.get(name, {}).values() if (h := cmap.headers.get(b))}
        rows[name] = TensorRow(name, cmap.transforms[name].rel, str(header["dtype"]), shape, True,
                               "/".join(sorted(c for c in coders if c)) or None, stages or ["lossy"],
                               math.prod(shape) * (dtype_itemsize(code) if code else 4), stored,
                               rel_mse=_float_or_none(header.get("rel_mse")))


def inspect_checkpoint(path: str | Path, bound: bool = True, workers: int = 1, variant: str | None = None,
                       max_output_bytes: int | None = MAX_OUTPUT_BYTES) -> Report:
    """Per-tensor dtype, shape, stages, sizes, ratio, bits/weight and (``bound``) the order-0 bound.

    The bound needs each compressed tensor decoded (``workers`` at a time); without it only the
    shard headers and the tiny header tensors are read. ``variant``: of a ``save_pretrained(variant=)``.
    """
    start = time.perf_counter()
    path = Path(path)
    shards, _ = read_checkpoint(path, variant)
    cmap = CompressedMap(shards, max_output_bytes)
    report = Report(str(path), config=read_config(path))
    rows = _rows(shards, cmap, report.config)
    if bound:
        with ExitStack() as stack, ThreadPoolExecutor(max(1, workers)) as pool:
            handles, bufs = ShardHandles(stack), BufferPool(keep=2 * max(1, workers) + 3)
            for shard in shards:
                for name, tensor, _ in iter_decoded(shard, cmap, pool, max(1, workers), handles, bufs, plain=False):
                    if name in rows:  # a lossy weight's parts have no row of their own
                        rows[name].bound_bits = order0_bits(tensor)
    report.rows = list(rows.values())
    report.seconds = time.perf_counter() - start
    return report


def _check_shapes(path: Path, rows: dict[str, TensorRow], config: Any) -> None:
    """Each stored weight against the parameter of the model config.json describes (as from_pretrained does)."""
    from llmcomp_hf._hf_compat import configured_shapes

    expected = configured_shapes(config, path)
    for name, row in rows.items():
        want = expected.get(name)
        if want is not None and tuple(want) != tuple(row.shape):
            raise FormatError(f"stored weight declares shape {list(row.shape)} where the model config.json describes "
                              f"expects {list(want)}{where(name, str(path / row.file))}; config.json or the shard "
                              "is damaged, or they come from different models")


def verify_checkpoint(path: str | Path, workers: int = 1, progress: Any = None,
                      max_output_bytes: int | None = MAX_OUTPUT_BYTES) -> Report:
    """Check format fields, shard metadata, the index and every tensor's checksum (plain tensors: those
    with a ``llmcomp.plain.<key>`` entry in their shard's metadata; older checkpoints have none).

    Returns a Report whose ``error`` names the first bad tensor and its file (None when all is well);
    raises CheckpointError when ``path`` is not a checkpoint folder at all.
    """
    from llmcomp_hf.config import QUANT_METHOD, CompressionConfig

    start = time.perf_counter()
    path = Path(path)
    report = Report(str(path))
    try:
        shards, sharded = read_checkpoint(path)
        for shard in shards:
            check_metadata(shard.metadata, str(shard.path))
        if sharded:
            _check_index(path, shards)
        report.config = read_config(path)
        # what from_pretrained reads first, before llmcomp code runs (a model with remote code (auto_map)
        # needs trust_remote_code, which verify never grants: those configs are left to the loader)
        with_model = report.config is not None and "auto_map" not in report.config
        if with_model:
            from llmcomp_hf._hf_compat import check_model_config

            model_config = check_model_config(path)
        qc = (report.config or {}).get("quantization_config")
        cmap = CompressedMap(shards, max_output_bytes)
        if cmap.files and not (isinstance(qc, dict) and qc.get("quant_method") == QUANT_METHOD):
            raise FormatError(f"config.json of {str(path)!r} has no llmcomp quantization_config, so transformers "
                              "would not decode the compressed tensors; restore config.json")
        if isinstance(qc, dict) and qc.get("quant_method") == QUANT_METHOD:
            try:
                CompressionConfig.from_dict(dict(qc))
            except ValueError as exc:
                raise FormatError(f"invalid quantization_config in {str(path / 'config.json')!r}: {exc}") from exc
        rows = _rows(shards, cmap, report.config)
        if with_model:
            _check_shapes(path, rows, model_config)
        total, done = sum(r.original_bytes for r in rows.values() if r.compressed), 0
        with ExitStack() as stack, ThreadPoolExecutor(max(1, workers)) as pool:
            handles, bufs = ShardHandles(stack), BufferPool(keep=2 * max(1, workers) + 3)
            for shard in shards:  # lossy weights reconstructed with format.lossy.decode_lossy, as from_pretrained does
                report.plain_verified += check_plain_file(str(shard.path))  # plain tensors with a metadata checksum
                for name, _, _ in iter_decoded(shard, cmap, pool, max(1, workers), handles, bufs, plain=False,
                                               reconstruct=True):
                    done += rows[name].original_bytes if name in rows else 0
                    if progress is not None:
                        progress("verify", done, total)
        report.rows = list(rows.values())
    except (FormatError, VerificationError) as exc:  # a missing folder (CheckpointError) is a usage error
        report.error = str(exc)
    report.seconds = time.perf_counter() - start
    return report


def _check_index(path: Path, shards: list[ShardInfo]) -> None:
    from llmcomp_hf.paths import read_weight_map

    weight_map = read_weight_map(path / INDEX_NAME)
    actual = {t.name: s.rel for s in shards for t in s.tensors}
    for key, rel in weight_map.items():
        if actual.get(key) != rel:
            raise FormatError(f"{INDEX_NAME} maps {key!r} to {rel!r}, but it is "
                              f"{'in ' + repr(actual[key]) if key in actual else 'in no shard'}; restore the index")
    extra = sorted(set(actual) - set(weight_map))
    if extra:
        raise FormatError(f"tensors {extra[:3]} are in shards but not in {INDEX_NAME}; restore the index")


def verify_against_source(
    out: Path, src: Path, src_shards: list[ShardInfo], workers: int = 1, progress: Any = None,
    expected: dict[str, str] | None = None,
) -> None:
    """Decode every tensor of the checkpoint in ``out`` and compare it bit for bit with ``src``.

    Lossy weights cannot match the source: their reconstruction is compared with ``expected`` (SHA-256
    of the reconstruction computed while compressing, by name) instead, and must be listed there.
    Raises VerificationError naming the first tensor that differs (or is missing) and its file.
    """
    from llmcomp_hf.stream.lossy import digest

    expected = expected or {}
    out_shards, _ = read_checkpoint(out)
    cmap = CompressedMap(out_shards)
    total = sum(t.numel * dtype_itemsize(t.dtype, t.name) for s in src_shards for t in s.tensors)
    done = 0
    with ExitStack() as stack, ThreadPoolExecutor(max(1, workers)) as pool:
        handles, bufs = ShardHandles(stack), BufferPool(keep=2 * max(1, workers) + 3)
        by_rel = {s.rel: s for s in out_shards}
        for src_shard in src_shards:
            shard = by_rel.get(src_shard.rel)
            if shard is None:
                raise VerificationError(f"shard {src_shard.rel!r} of the source was not written to {str(out)!r}")
            src_info = {t.name: t for t in src_shard.tensors}
            seen = set()
            with ShardReader(src_shard) as original:
                out_info = {t.name: t for t in shard.tensors}
                decoded = iter_decoded(shard, cmap, pool, max(1, workers), handles, bufs, reconstruct=True)
                for name, value, compressed in decoded:
                    if name not in src_info:
                        raise VerificationError(f"unexpected tensor{where(name, str(shard.path))} not in the source")
                    if compressed:
                        got = (NAME_TO_CODE.get(str(value.dtype).removeprefix("torch.")), tuple(value.shape))
                    else:
                        got = (out_info[name].dtype, out_info[name].shape)
                    info = src_info[name]
                    if (name in cmap.transforms) != (name in expected):
                        raise VerificationError(f"tensor{where(name, str(shard.path))} is "
                                                f"{'not ' if name in expected else ''}lossy, unlike what was written")
                    if name in expected:
                        same = got == (info.dtype, info.shape) and digest(value) == expected[name]
                        what = "reconstruction differs from the one computed while compressing"
                    else:
                        buf = bufs.take(original.nbytes(name))
                        same = got == (info.dtype, info.shape) and np.array_equal(
                            original.read_into(name, buf), tensor_bytes(value))
                        bufs.give(buf)
                        what = "decoded tensor differs from the source"
                    if not same:
                        raise VerificationError(
                            f"{what}{where(name, str(shard.path))}; please report this bug with the source checkpoint"
                        )
                    seen.add(name)
                    done += original.nbytes(name)
                    if progress is not None:
                        progress("verify", done, total)
            if seen != set(src_info):
                raise VerificationError(f"tensors {sorted(set(src_info) - seen)[:3]} are missing from {str(shard.path)!r}")


def _float_or_none(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def weight_error(rows: list[Any]) -> dict[str, float] | None:
    """Measured weight error of the lossy rows: numel-weighted mean and worst ``rel_mse``, or None."""
    lossy = [r for r in rows if getattr(r, "rel_mse", None) is not None]
    if not lossy:
        return None
    numel = sum(r.numel for r in lossy)
    return {"mean": sum(r.rel_mse * r.numel for r in lossy) / max(numel, 1), "max": max(r.rel_mse for r in lossy)}


def card_stats(records: list[Any], config: Any) -> Any:
    """CardStats from per-tensor records (compress results or inspect rows) and the config."""
    from llmcomp_hf.card import CardStats, stage_names

    cfg = config.to_dict() if hasattr(config, "to_dict") else dict(config or {})
    comp = [r for r in records if r.compressed]
    return CardStats(
        original_bytes=sum(r.original_bytes for r in records),
        compressed_bytes=sum(r.stored_bytes for r in records),
        weights=sum(math.prod(r.shape) for r in comp),
        weights_stored_bytes=sum(r.stored_bytes for r in comp),
        tensors=len(records),
        compressed_tensors=len(comp),
        coder=str(cfg.get("coder", "huffman")),
        format_version=int(cfg.get("format_version", 1)),
        stages=stage_names(cfg.get("stages")),
        dtypes=sorted({CODE_TO_NAME.get(r.dtype, r.dtype) for r in comp}),
        calibration=cfg.get("calibration_info"),
        rel_mse=weight_error(comp),
    )


def stats_from_checkpoint(path: str | Path, variant: str | None = None) -> Any:
    """CardStats of an llmcomp checkpoint folder, from its headers (no decoding)."""
    report = inspect_checkpoint(path, bound=False, variant=variant)
    return card_stats(report.rows, ((report.config or {}).get("quantization_config") or {}))


def write_checkpoint_card(folder: Path, stats: Any, base_model: str | None, src: Path | None = None,
                          repo_id: str | None = None, records: list[Any] | None = None) -> Path:
    """Write the card into ``folder``, carrying license/language/pipeline_tag/datasets over from ``src``'s card.

    ``records`` (compress records) adds a table of the effective bits/weight of every compressed tensor.
    """
    from llmcomp_hf.card import read_card, write_card

    base_card = read_card(src) if src is not None else None
    metadata = base_card.data.to_dict() if base_card is not None else {}
    comp = [r for r in records or [] if r.compressed]
    table = ""
    if comp:
        rows = [f"| {r.name} | {'x'.join(map(str, r.shape))} | {8.0 * r.stored_bytes / max(math.prod(r.shape), 1):.3f} |"
                for r in comp]
        table = "\n".join(["", "## Bits per weight by tensor", "",
                           "Effective bits/weight of each compressed tensor, everything stored counted.", "",
                           "| tensor | shape | bits/weight |", "|---|---|---:|", *rows, ""])
    return write_card(folder, stats, base_model=base_model, repo_id=repo_id, metadata=metadata, appendix=table)


def restore_card(
    folder: str | os.PathLike,
    base_model: str | None = None,
    repo_id: str | None = None,
    variant: str | None = None,
) -> Path:
    """Re-derive the llmcomp card of the checkpoint in ``folder`` from its shards and put it in ``README.md``.

    Call it after a tool wrote its own card over ours, e.g. ``SentenceTransformer.save(folder)`` of a
    compressed model: that card and its text stay, our YAML facts and section are merged in. The same as
    ``llmcomp card FOLDER``. ``base_model`` defaults to the one already in the card.
    """
    from llmcomp_hf.card import CardError, write_card
    from llmcomp_hf.errors import LlmcompError
    from llmcomp_hf.paths import read_json

    folder = Path(folder)
    config = folder / "config.json"
    try:
        method = (read_json(config, "config.json").get("quantization_config") or {}).get("quant_method")
    except (OSError, LlmcompError, AttributeError):
        method = None
    if method != "llmcomp":
        raise CardError(f"{os.fspath(config)!r} does not name an llmcomp checkpoint (quantization_config.quant_method "
                        "'llmcomp'): give the folder written by `llmcomp compress` or save_pretrained")
    return write_card(folder, stats_from_checkpoint(folder, variant), base_model=base_model, repo_id=repo_id)
