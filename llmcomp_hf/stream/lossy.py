"""Streaming lossy shards (docs/format.md part 3), written exactly as the quantizer stores them.

Each selected weight goes through ``format.lossy.compress_lossy`` (the function the quantizer runs
on load) with the config's pipeline, coder and block size; ``LossyWeight.pack()`` gives its checkpoint
tensors. Their names and sizes are only known once the stages ran, while a safetensors header lists
every tensor first, so a shard is made in two passes: the stored tensors are spooled to a scratch
file beside the output (compressed bytes only), then the shard is written with every size known.
Memory holds about ``workers + 1`` source tensors, as in the lossless path.
"""

from __future__ import annotations

import hashlib
import os
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from llmcomp_hf.config import CompressionConfig
from llmcomp_hf.errors import LlmcompError, where
from llmcomp_hf.format.safetensors_header import CODE_TO_NAME, NAME_TO_CODE
from llmcomp_hf.format.shard import PLAIN_PREFIX, SHARD_METADATA, raw_checksum, transform_key
from llmcomp_hf.stream.reader import BufferPool, ShardReader
from llmcomp_hf.stream.records import TensorRecord
from llmcomp_hf.stream.source import CheckpointError, ShardInfo, TensorInfo, tensor_bytes
from llmcomp_hf.stream.writer import StreamingShardWriter, dtype_itemsize


def digest(tensor: Any) -> str:
    """SHA-256 of a tensor's raw bytes (what compress-time reconstructions are checked against)."""
    return hashlib.sha256(tensor_bytes(tensor)).hexdigest()


@dataclass
class _Spooled:
    code: str
    shape: list[int]
    offset: int
    nbytes: int


class Spool:
    """Tensors parked in a scratch file until their shard's header can be written; removed on close."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
        self._end = 0
        self.items: dict[str, _Spooled] = {}

    def put(self, key: str, tensor: Any) -> None:
        raw = memoryview(tensor_bytes(tensor)).cast("B")
        code = NAME_TO_CODE[str(tensor.dtype).removeprefix("torch.")]
        self.items[key] = _Spooled(code, [int(d) for d in tensor.shape], self._end, raw.nbytes)
        pos = self._end
        while raw.nbytes:
            done = os.pwrite(self._fd, raw, pos)
            raw, pos = raw[done:], pos + done
        self._end = pos

    def get(self, key: str) -> bytes:
        item = self.items[key]
        return os.pread(self._fd, item.nbytes, item.offset) if item.nbytes else b""

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        if self.path.exists():
            self.path.unlink()


def _compress(info: TensorInfo, tensor: Any, config: CompressionConfig, pipeline: Any, file: str,
              plan: Any = None) -> tuple[Any, str]:
    """(LossyWeight, digest of its reconstruction); the stages' errors become CheckpointErrors naming the file.

    ``plan`` (a calibration.CalibratedPlan) gives the weight its own stages and importance, as in the quantizer.
    """
    from llmcomp_hf.format.lossy import compress_lossy

    try:
        if plan is None:
            stored, recon = compress_lossy(info.name, tensor, pipeline, config.coder, config.block_size)
        else:
            stored, recon = compress_lossy(info.name, tensor, plan.pipeline(info.name), config.coder,
                                           config.block_size, importance=plan.importance(info.name, tensor.shape),
                                           hessian=plan.hessian(info.name),
                                           row_importance=plan.row_importance(info.name), calibration=plan.info)
    except LlmcompError as exc:
        raise CheckpointError(f"{exc}{where(None, file)}") from exc
    return stored, digest(recon)


def compress_lossy_shard(
    shard: ShardInfo,
    out: Path,
    config: CompressionConfig,
    selected: set[str],
    pool: ThreadPoolExecutor,
    workers: int,
    tick: Callable[[int], None],
    bufs: BufferPool,
    digests: dict[str, str],
    plan: Any = None,
) -> list[Any]:
    """Write ``out`` from ``shard``: the ``selected`` weights lossy, everything else copied byte for byte.

    Returns TensorRecords (``keys`` lists each weight's checkpoint tensors); ``digests`` receives the
    SHA-256 of every reconstruction, for ``--verify``. ``plan``: the calibrated config's plan over
    every selected weight of the checkpoint (``config.calibrated_plan(selected)``), None otherwise.
    """
    pipeline = config.pipeline()
    out.parent.mkdir(parents=True, exist_ok=True)
    spool = Spool(out.with_name(f".{out.name}.spool"))
    records: dict[str, TensorRecord] = {}
    pending: deque[tuple[TensorInfo, Future, np.ndarray]] = deque()

    def drain_one() -> None:
        info, fut, buf = pending.popleft()
        stored, recon_digest = fut.result()
        bufs.give(buf)
        packed = stored.pack()
        for key, tensor in packed.items():
            spool.put(key, tensor)
        digests[info.name] = recon_digest
        size = info.numel * dtype_itemsize(info.dtype)
        records[info.name] = TensorRecord(info.name, shard.rel, info.dtype, info.shape, size, stored.nbytes, True,
                                          keys=tuple(packed), lossy=True, rel_mse=stored.header.get("rel_mse"))
        tick(size)

    writer = None
    try:
        with ShardReader(shard) as reader:
            for info in shard.tensors:  # pass 1: the lossy weights, into the spool
                if info.name not in selected:
                    continue
                tensor, buf = reader.read(info.name, bufs)
                pending.append((info, pool.submit(_compress, info, tensor, config, pipeline, str(shard.path), plan), buf))
                del tensor
                while len(pending) > workers:
                    drain_one()
            while pending:
                drain_one()
            writer = StreamingShardWriter(str(out), {"format": "pt", **SHARD_METADATA})
            for info in shard.tensors:
                if info.name in records:
                    for key in records[info.name].keys:
                        item = spool.items[key]
                        writer.add_fixed(key, item.code, item.shape)
                        if key == transform_key(info.name):  # plain bytes too: a renamed key must not go unseen
                            writer.metadata[PLAIN_PREFIX + key] = "0" * 16
                else:
                    writer.add_fixed(info.name, info.dtype, list(info.shape))
                    if info.dtype in CODE_TO_NAME:  # the header's room; the checksum is set when written
                        writer.metadata[PLAIN_PREFIX + info.name] = "0" * 16
            writer.start()
            out_records = []
            for info in shard.tensors:  # pass 2: plain tensors from the source, lossy ones from the spool
                if info.name in records:
                    for key in records[info.name].keys:
                        data = spool.get(key)
                        writer.write_fixed(key, data)
                        if key == transform_key(info.name):
                            item = spool.items[key]
                            raw = np.frombuffer(data, np.uint8)
                            writer.metadata[PLAIN_PREFIX + key] = raw_checksum(raw, CODE_TO_NAME[item.code], list(item.shape))
                    out_records.append(records[info.name])
                    continue
                size = info.numel * dtype_itemsize(info.dtype, info.name)
                buf = bufs.take(size)
                raw = reader.read_into(info.name, buf)
                writer.write_fixed(info.name, raw)
                if info.dtype in CODE_TO_NAME:
                    writer.metadata[PLAIN_PREFIX + info.name] = raw_checksum(raw, CODE_TO_NAME[info.dtype], list(info.shape))
                bufs.give(buf)
                out_records.append(TensorRecord(info.name, shard.rel, info.dtype, info.shape, size, size, False))
                tick(size)
            writer.finish()
    except BaseException:
        for _, fut, _ in pending:
            fut.cancel()
        if writer is not None:
            writer.abort()
        raise
    finally:
        spool.close()
    return out_records


__all__ = ["Spool", "compress_lossy_shard", "digest"]
