"""decode_jobs: many tensors in one kernel call, shared between threads through atomic job states."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

from llmcomp_hf.codec import FormatError, decode, encode
from llmcomp_hf.codec import jobs as J
from llmcomp_hf.codec.api import thread_scratch
from llmcomp_hf.codec.atomics import compare_exchange, load_acquire, store_release
from llmcomp_hf.codec.encoded import expected_sum

from .damage import BASES, base, tampered
from .helpers import assert_same_bits, tensor_of

BS = 256


class Table:
    """Encodings described as jobs, with outputs allocated (the memory stays referenced here)."""

    def __init__(self, encs, outputs: bool = True) -> None:
        self.encs = encs
        rows, at = [], 0
        for enc in encs:
            rows.append(J.job_row(enc, at))
            at += enc.index.shape[0]
        self.table = np.array(rows, np.int64).reshape(len(encs), J.COLUMNS)
        self.indexes = np.concatenate([e.index for e in encs]) if encs else np.zeros(0, np.int64)
        self.state = np.zeros(len(encs), np.int64)
        self.csums = np.zeros(len(encs), np.uint64)
        self.outs = [torch.empty(list(e.shape), dtype=getattr(torch, e.dtype)) for e in encs]
        for i, out in enumerate(self.outs):
            self.table[i, J.OUT] = out.data_ptr() if outputs else 0

    def run(self, first=0, stop=None, step=1, watch=-1, max_bytes=1 << 62) -> None:
        stop = len(self.encs) if stop is None else stop
        planes = int(self.table[:, J.PLANES].max())
        scratch = [part[0] for part in thread_scratch(1, planes, BS)]
        J.decode_jobs(self.table, self.indexes, self.state, self.csums, first, stop, step, watch, max_bytes, *scratch)

    def checksum_ok(self, i: int) -> bool:
        return int(self.csums[i]) == expected_sum(self.encs[i].header)


def test_atomics_exchange_only_the_expected_value() -> None:
    a = np.zeros(3, np.int64)
    assert compare_exchange(a, 1, 0, 7) == 0 and a[1] == 7
    assert compare_exchange(a, 1, 0, 9) == 7 and a[1] == 7  # not 0 any more: unchanged
    store_release(a, 2, 5)
    assert load_acquire(a, 2) == 5 and list(a) == [0, 7, 5]


def test_atomic_claims_from_two_threads_give_each_item_once() -> None:
    state = np.zeros(20000, np.int64)
    won = [[], []]

    def claim(k: int) -> None:
        for i in range(state.size):
            if compare_exchange(state, i, 0, k + 1) == 0:
                won[k].append(i)

    threads = [threading.Thread(target=claim, args=(k,)) for k in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(won[0] + won[1]) == list(range(state.size))
    assert all(state[i] == 1 for i in won[0]) and all(state[i] == 2 for i in won[1])


def _mixed_tensors() -> list[torch.Tensor]:
    out = []
    for i, (dtype, n) in enumerate([("bfloat16", 3 * BS + 7), ("float16", 1), ("float32", 2 * BS), ("int8", BS + 3),
                                    ("float64", 77), ("bfloat16", 0), ("bool", 5 * BS), ("float8_e4m3fn", 900)]):
        out.append(tensor_of(dtype, n, "specials" if i % 2 else "skewed", seed=40 + i))
    return out


@pytest.mark.parametrize("coder", ["huffman", "rans", "raw", "rans-ctx"])
def test_every_job_decodes_bit_exactly_with_its_checksum(coder: str) -> None:
    tensors = _mixed_tensors()
    t = Table([encode(x, coder=coder, block_size=BS) for x in tensors])
    t.run()
    assert list(t.state) == [J.DONE] * len(tensors)
    for i, x in enumerate(tensors):
        assert_same_bits(t.outs[i], x, f"job {i}")
        assert t.checksum_ok(i)


def test_two_walkers_share_the_list_and_a_waiter_returns_when_its_job_is_done() -> None:
    tensors = [tensor_of("bfloat16", 9 * BS + i, "skewed", seed=60 + i) for i in range(12)]
    t = Table([encode(x, block_size=BS) for x in tensors])
    t.run(first=11, stop=-1, step=-1, watch=11)  # a waiter watching job 11 decodes it, then returns
    assert t.state[11] == J.DONE and (t.state[:11] == J.PENDING).all()
    t.run(first=10, stop=5, step=-1)  # backwards over 10..6
    t.run()  # forwards: skips the done ones
    assert (t.state == J.DONE).all()
    for i, x in enumerate(tensors):
        assert_same_bits(t.outs[i], x, f"job {i}")


def test_claimed_oversized_and_unallocated_jobs_are_left_alone() -> None:
    tensors = [tensor_of("float32", n * BS, "skewed", seed=70 + n) for n in (4, 4, 8, 4)]
    t = Table([encode(x, block_size=BS) for x in tensors])
    t.state[1] = J.CLAIMED
    t.table[3, J.OUT] = 0  # no output yet: must never be written
    t.run(max_bytes=4 * BS * 4)
    assert list(t.state) == [J.DONE, J.CLAIMED, J.PENDING, J.PENDING]
    assert_same_bits(t.outs[0], tensors[0], "job 0")
    t.table[3, J.OUT] = t.outs[3].data_ptr()
    t.run()
    assert list(t.state) == [J.DONE, J.CLAIMED, J.DONE, J.DONE]
    assert_same_bits(t.outs[2], tensors[2], "job 2")
    assert_same_bits(t.outs[3], tensors[3], "job 3")


@pytest.mark.parametrize("name", sorted(BASES))
def test_damaged_streams_fail_their_job_only(name: str) -> None:
    """A truncated index, hostile offsets or corrupted bytes: that job is FAILED or its checksum
    differs (never a crash), its neighbours still decode, and ``decode`` reports the damage."""
    want, enc = base(name)
    good = encode(tensor_of("bfloat16", 2 * BS, "skewed", seed=80), block_size=BS)
    damaged = []
    idx = enc.index.copy()
    idx[-1] += 5  # index does not cover the data
    damaged.append(tampered(enc, index=idx))
    idx = enc.index.copy()
    if idx.shape[0] > 2:
        idx[1] = idx[2] + 1  # decreasing offsets
        damaged.append(tampered(enc, index=idx))
    damaged.append(tampered(enc, data=enc.data[: enc.data.shape[0] // 2].copy(),
                            index=np.minimum(enc.index, enc.data.shape[0] // 2)))
    for pos in range(0, enc.data.shape[0], max(1, enc.data.shape[0] // 23)):
        data = enc.data.copy()
        data[pos] ^= 0x5A
        damaged.append(tampered(enc, data=data))
    for bad in damaged:
        t = Table([good, bad, good])
        t.run()
        assert t.state[0] == J.DONE and t.state[2] == J.DONE
        assert_same_bits(t.outs[0], decode(good), "neighbour before")
        assert_same_bits(t.outs[2], decode(good), "neighbour after")
        if t.state[1] == J.FAILED or not t.checksum_ok(1):
            with pytest.raises(FormatError, match=name):
                decode(bad)  # the ordinary decoder reports what the job could not do
        else:
            assert_same_bits(t.outs[1], want, "undamaged result")
