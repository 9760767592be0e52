"""Streaming compression of a safetensors checkpoint of any size, shard by shard, tensor by tensor.

Which tensors are compressed losslessly (there is no model here, so the rule works on names, shapes,
dtypes): a tensor is encoded when its name is ``*.weight``, it has 2 or more dimensions, its dtype is in
``config.dtypes``, it has at least ``config.min_numel`` elements and its module (the name without
``.weight``) is not matched by ``config.modules_to_not_convert`` (an entry matches a module path, a
prefix of it or any run of its dot-separated segments, as in the quantizer). That selects the
weights of Linear, Embedding and Conv layers; norms and biases (1-D) and buffers stay plain.
Everything else is copied through byte for byte.

A config with lossy ``stages`` changes weights, so it takes exactly the quantizer's selection, made
on a weightless skeleton of the model (see select.py), and writes the quantizer's shard layout
(docs/format.md part 3, see lossy.py).

Each output shard mirrors one input shard (same file name) and is written as its tensors are
encoded (see writer.py), so memory holds about ``workers + 1`` tensors, never a shard.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import numpy as np

from llmcomp_hf._select import compresses_key
from llmcomp_hf.codec.blocks import GROUP
from llmcomp_hf.codec.api import MAX_OUTPUT_BYTES
from llmcomp_hf.config import QUANT_METHOD, CompressionConfig, LosslessConfig
from llmcomp_hf.format.safetensors_header import CODE_TO_NAME
from llmcomp_hf.format.shard import PLAIN_PREFIX, SHARD_METADATA, pack, part_key, raw_checksum
from llmcomp_hf.stream.files import (
    CARD_NAME,
    check_paths,
    copy_side_files,
    side_files,
    staged_output,
)
from llmcomp_hf.stream.reader import BufferPool, ShardReader
from llmcomp_hf.stream.records import RunResult, TensorRecord
from llmcomp_hf.stream.source import (
    CONFIG_NAME,
    INDEX_NAME,
    CheckpointError,
    ShardInfo,
    TensorInfo,
    read_checkpoint,
    read_config,
    write_json,
)
from llmcomp_hf.stream.writer import StreamingShardWriter, dtype_itemsize

Progress = Callable[[str, int, int], None]  # (phase, bytes done, bytes total)


def is_selected(info: TensorInfo, config: CompressionConfig) -> bool:
    """The module-docstring rule: is this source tensor compressed under ``config``?"""
    return compresses_key(info.name, CODE_TO_NAME.get(info.dtype, ""), tuple(info.shape), config)


def compress_checkpoint(
    src: str | Path,
    dst: str | Path,
    config: CompressionConfig | None = None,
    *,
    workers: int = 1,
    threads_per_tensor: int = 1,
    verify: bool = False,
    overwrite: bool = False,
    base_model: str | None = None,
    progress: Progress | None = None,
) -> RunResult:
    """Compress the safetensors checkpoint folder ``src`` into a new llmcomp checkpoint ``dst``.

    Args:
        config: what to compress and how (default ``LosslessConfig()``); written to ``config.json``.
            With lossy ``stages`` the quantizer's weights get them and the shards hold format part 3.
        workers: tensors encoded at once, in threads (the codec releases the GIL).
        threads_per_tensor: codec threads inside one tensor's encode.
        verify: decode the written checkpoint and compare it with ``src`` bit for bit before finishing
            (lossy weights: their reconstruction with the one computed while compressing).
        overwrite: replace an existing ``dst`` (atomically) instead of refusing.
        base_model: hub id of the original model, for the model card.
        progress: called with (phase, bytes done, bytes total); phases "compress" and "verify".

    ``dst`` appears only when everything succeeded; ``src`` is only read.
    Raises CheckpointError (bad input/output), FormatError (unreadable source) or VerificationError.
    """
    from llmcomp_hf._guard import GUARD_KEY
    from llmcomp_hf.stream.check import (
        card_stats,
        verify_against_source,
        write_checkpoint_card,
    )

    start = time.perf_counter()
    src, dst = Path(src), Path(dst)
    config = config or LosslessConfig()
    check_paths(src, dst)
    shards, sharded = read_checkpoint(src)
    src_config = read_config(src)
    extra_files = side_files(src, skip={CONFIG_NAME, CARD_NAME})  # refuses links leading out before any work
    existing = (src_config or {}).get("quantization_config")
    if isinstance(existing, dict):
        method = existing.get("quant_method")
        ours = method == QUANT_METHOD
        raise CheckpointError(
            f"{str(src)!r} is already {'llmcomp-compressed' if ours else f'quantized ({method})'}; compress the "
            "original float checkpoint" + (" or run `llmcomp decompress` first" if ours else "")
        )
    if any(k.startswith("llmcomp.") for s in shards for k in s.metadata):
        raise CheckpointError(f"{str(src)!r} already holds llmcomp shards; compress the original checkpoint")
    selected: set[str] | None = None
    if not config.is_lossless:
        from llmcomp_hf.stream.select import lossy_selection

        selected = lossy_selection(src, shards, config)
    plan = config.calibrated_plan(selected) if selected is not None else None  # checks the calibration file first
    total = sum(t.numel * dtype_itemsize(t.dtype, t.name) for s in shards for t in s.tensors)
    result = RunResult(dst)
    digests: dict[str, str] = {}  # lossy weights: SHA-256 of the reconstruction, for verify
    done = [0]

    def tick(n: int) -> None:
        done[0] += n
        if progress is not None:
            progress("compress", done[0], total)

    bufs = BufferPool(keep=max(1, workers) + 2)  # source tensors in flight, reused
    with staged_output(dst, overwrite) as tmp, ThreadPoolExecutor(max(1, workers)) as pool:
        weight_map: dict[str, str] = {}
        for shard in shards:
            if selected is None:
                records = _compress_shard(
                    shard, tmp / shard.rel, config, pool, max(1, workers), threads_per_tensor, tick, bufs
                )
            else:
                from llmcomp_hf.stream.lossy import compress_lossy_shard

                records = compress_lossy_shard(
                    shard, tmp / shard.rel, config, selected, pool, max(1, workers), tick, bufs, digests, plan
                )
            result.records += records
            for r in records:
                weight_map.update(dict.fromkeys(r.stored_keys, shard.rel))
        bufs.clear()
        if sharded:
            write_json(tmp / INDEX_NAME, {"metadata": {"total_size": result.stored_bytes}, "weight_map": weight_map})
        copy_side_files(src, tmp, files=extra_files)
        cfg = dict(src_config or {})
        cfg["quantization_config"] = config.to_dict()
        cfg["fusion_config"] = {**(cfg.get("fusion_config") or {}), GUARD_KEY: False}
        write_json(tmp / CONFIG_NAME, cfg)
        write_checkpoint_card(tmp, card_stats(result.records, config), base_model, src, repo_id=dst.name,
                              records=result.records if selected is not None else None)
        if verify:
            verify_against_source(tmp, src, shards, workers=max(1, workers), progress=progress, expected=digests)
            result.verified = True
    result.seconds = time.perf_counter() - start
    return result


def _compress_shard(
    shard: ShardInfo,
    out: Path,
    config: CompressionConfig,
    pool: ThreadPoolExecutor,
    workers: int,
    threads: int,
    tick: Callable[[int], None],
    bufs: BufferPool,
) -> list[TensorRecord]:
    from llmcomp_hf.codec import encode

    out.parent.mkdir(parents=True, exist_ok=True)
    writer = StreamingShardWriter(str(out), {"format": "pt", **SHARD_METADATA})
    chosen = {t.name: is_selected(t, config) for t in shard.tensors}
    for t in shard.tensors:
        if chosen[t.name]:
            n_blocks = -(-t.numel // config.block_size)
            writer.add_fixed(part_key(t.name, "index"), "I64", [n_blocks + 1])
            writer.add_deferred(part_key(t.name, "data"))
            writer.add_deferred(part_key(t.name, "header"))
        else:
            writer.add_fixed(t.name, t.dtype, list(t.shape))
            if t.dtype in CODE_TO_NAME:  # the header's room; the checksum is set when the tensor is written
                writer.metadata[PLAIN_PREFIX + t.name] = "0" * 16
    records: list[TensorRecord] = []
    pending: deque[tuple[TensorInfo, Future, np.ndarray]] = deque()

    def drain_one() -> None:
        info, fut, buf = pending.popleft()
        enc = fut.result()
        bufs.give(buf)  # the encoder is done reading the source bytes
        parts = pack(info.name, enc)
        writer.write_fixed(part_key(info.name, "index"), parts[part_key(info.name, "index")].numpy())
        writer.append(part_key(info.name, "data"), parts[part_key(info.name, "data")].numpy())
        writer.append(part_key(info.name, "header"), parts[part_key(info.name, "header")].numpy())
        size = info.numel * dtype_itemsize(info.dtype)
        records.append(TensorRecord(info.name, shard.rel, info.dtype, info.shape, size, enc.nbytes, True))
        tick(size)

    writer.start()
    try:
        with ShardReader(shard) as reader:
            for info in shard.tensors:
                size = info.numel * dtype_itemsize(info.dtype, info.name)
                if not chosen[info.name]:
                    buf = bufs.take(size)
                    raw = reader.read_into(info.name, buf)
                    writer.write_fixed(info.name, raw)
                    if info.dtype in CODE_TO_NAME:
                        writer.metadata[PLAIN_PREFIX + info.name] = raw_checksum(raw, CODE_TO_NAME[info.dtype], list(info.shape))
                    bufs.give(buf)
                    records.append(TensorRecord(info.name, shard.rel, info.dtype, info.shape, size, size, False))
                    tick(size)
                    continue
                tensor, buf = reader.read(info.name, bufs)
                # A tensor of several block groups also takes idle workers' threads (groups go to whichever
                # thread is free), so one big embedding does not leave the other workers idle at the end.
                many_groups = info.numel > GROUP * config.block_size
                fut = pool.submit(encode, tensor, coder=config.coder, block_size=config.block_size,
                                  threads=max(threads, workers) if many_groups else threads, name=info.name)
                pending.append((info, fut, buf))
                del tensor
                while len(pending) > workers:
                    drain_one()
            while pending:
                drain_one()
        writer.finish()
    except BaseException:
        for _, fut, _ in pending:
            fut.cancel()
        writer.abort()
        raise
    return records


def decompress_checkpoint(
    src: str | Path,
    dst: str | Path,
    *,
    workers: int = 1,
    overwrite: bool = False,
    progress: Progress | None = None,
    max_output_bytes: int | None = MAX_OUTPUT_BYTES,
) -> RunResult:
    """Turn the llmcomp checkpoint ``src`` back into a plain safetensors checkpoint ``dst``.

    ``max_output_bytes`` bounds each decoded tensor (default 16 GiB, None: none), checked before allocating.

    Same shard files and index layout; every tensor bit-identical to the original (each decode
    checks the tensor's checksum); ``quantization_config`` and the load guard leave ``config.json``.
    Lossy weights become their reconstruction (what ``from_pretrained`` of ``src`` gives), and the
    config and card of ``dst`` say so.
    """
    from llmcomp_hf.stream.expand import decompress_into

    start = time.perf_counter()
    src, dst = Path(src), Path(dst)
    check_paths(src, dst)
    result = RunResult(dst, verified=True)
    with staged_output(dst, overwrite) as tmp:
        result.records = decompress_into(src, tmp, workers=max(1, workers), progress=progress,
                                         max_output_bytes=max_output_bytes)
    result.seconds = time.perf_counter() - start
    return result
