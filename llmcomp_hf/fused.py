"""A Linear forward that decodes its weight a run of rows at a time and multiplies each run while hot.

``CompressedLinear`` (``decode="on_the_fly"``) used to decode its whole weight into a scratch buffer
the size of the largest layer, then multiply: the decoded weight went out to memory and back, and
the scratch of a 32000-token head alone was a fifth of a 150M model's dense size. Here the weight
``W`` ``[N, K]`` is cut into runs of ``rows`` rows (a multiple of 16, about ``CHUNK_ELEMENTS``
elements); each run's blocks are decoded into a small per-thread buffer (a block shared with the
previous run is moved, not decoded again), then ``F.linear(x, W[r0:r1], bias[r0:r1])`` gives
columns ``r0:r1`` of the output.

Bit-identity: output column ``j`` depends only on row ``j`` of ``W``, so the runs give the same bits
as one ``F.linear`` over the whole weight whenever torch reduces over ``K`` in the same order for the
smaller shape. That held on this project's CPU (torch 2.13, oneDNN bf16/fp16 at every batch size
tried; not fp32 with MKL at 32 rows and more) but is not a documented property, so it is checked:
the first call of each (shape, dtype, batch-size class, torch threads, bias, input rank) compares
the result with ``F.linear`` on the fully decoded weight, and a setting that differs falls back to
the whole-weight path for good (``fallbacks()`` lists them).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F

from llmcomp_hf.codec.encoded import EncodedTensor
from llmcomp_hf.codec.spans import SpanDecoder

# Decoded elements per run of rows: 512K bf16 elements (1 MiB) fit the 1.25 MiB L2 of this project's
# CPUs once split over 2 decoding threads. MEASURE: see bench/bench_on_the_fly.py --chunks.
CHUNK_ELEMENTS = 1 << 20
# Threads decoding one run. Measured on this project's 2-core VM, both cores free, torch at 2 threads
# (Llama 168M, a forward of one token, medians of 9): runs decoded by the caller alone 118 ms, by the
# caller and a pooled thread claiming blocks 131 ms (149 vs 165, 141 vs 169 with 4M-element runs):
# torch's OpenMP worker keeps spinning on the second core after each product, where the helper
# would decode. Whole weights (``decode_into``) still use torch's thread count.
RUN_THREADS = 1
ROW_ALIGN = 16  # runs of 1 row take torch's matrix-vector path, whose sums differ
_DTYPES = (torch.bfloat16, torch.float16, torch.float32)
_WORDS = {torch.bfloat16: torch.int16, torch.float16: torch.int16, torch.float32: torch.int32}
_NP_WORDS = {torch.int16: np.uint16, torch.int32: np.uint32}


@dataclass(frozen=True)
class Run:
    """Rows ``[r0, r1)``: blocks ``[lo, hi)`` decoded (block ``lo`` moved from the previous run when
    ``reuse``), the rows starting at element ``off`` of the buffer."""

    lo: int
    hi: int
    reuse: bool
    r0: int
    r1: int
    off: int


class RowPlan:
    """How one encoded 2-D weight is cut into runs of rows, and its span decoder."""

    def __init__(self, enc: EncodedTensor, chunk_elements: int | None = None) -> None:
        enc.validate()
        chunk_elements = CHUNK_ELEMENTS if chunk_elements is None else chunk_elements
        n, k = enc.shape
        bs = enc.header["block_size"]
        self.enc, self.decoder, self.block_size = enc, SpanDecoder(enc), bs
        self.n, self.k = n, k
        rows = max(ROW_ALIGN, chunk_elements // max(k, 1) // ROW_ALIGN * ROW_ALIGN)
        cuts = list(range(0, n, rows)) + [n]
        if len(cuts) > 2 and cuts[-1] - cuts[-2] < ROW_ALIGN:  # no short last run: merged into the one before
            del cuts[-2]
        self.rows = rows
        runs: list[Run] = []
        prev_hi = -1
        for r0, r1 in zip(cuts[:-1], cuts[1:]):
            lo, hi = r0 * k // bs, -(-(r1 * k) // bs)
            runs.append(Run(lo, hi, lo == prev_hi - 1, r0, r1, r0 * k - lo * bs))
            prev_hi = hi
        self.runs = runs
        self.scratch_elements = max((r.hi - r.lo) * bs for r in runs) if runs else 0
        self.stamp: Any = None
        self._steps: tuple[torch.Tensor | None, list[tuple[Any, ...]]] = (None, [])

    def steps(self, buf: torch.Tensor, words: np.ndarray) -> list[tuple[Any, ...]]:
        """Per run, its views of ``buf``: (block to move or None, first block to decode, end block,
        the words it decodes into, the rows as a [rows, K] weight, r0, r1); made once per buffer."""
        if self._steps[0] is buf:
            return self._steps[1]
        bs, k = self.block_size, self.k
        steps = []
        prev: Run | None = None
        for run in self.runs:
            move, first = None, run.lo
            if run.reuse and prev is not None:
                at = (run.lo - prev.lo) * bs
                move, first = (buf[:bs], buf[at : at + bs]), run.lo + 1
            w = buf[run.off : run.off + (run.r1 - run.r0) * k].view(run.r1 - run.r0, k)
            steps.append((move, first, run.hi, words[(first - run.lo) * bs :], w, run.r0, run.r1))
            prev = run
        self._steps = (buf, steps)
        return steps

    def key(self, x: torch.Tensor, bias: torch.Tensor | None) -> tuple[Any, ...]:
        """The setting whose bit-identity one check settles (see the module docstring)."""
        m = x.numel() // max(self.k, 1)
        m_class = m if m <= 8 else 8 + m.bit_length()
        return (self.n, self.k, self.block_size, self.rows, x.dtype, m_class, torch.get_num_threads(),
                bias is not None, x.dim(), x.is_contiguous())


class _Buffers(threading.local):
    """One decode buffer per dtype and thread, grown to the largest run."""

    def __init__(self) -> None:
        self.by_dtype: dict[torch.dtype, tuple[torch.Tensor, np.ndarray]] = {}

    def get(self, dtype: torch.dtype, elements: int) -> tuple[torch.Tensor, np.ndarray]:
        got = self.by_dtype.get(dtype)
        if got is None or got[0].numel() < elements:
            buf = torch.empty(elements, dtype=dtype)
            words = buf.view(_WORDS[dtype]).numpy().view(_NP_WORDS[_WORDS[dtype]])
            got = self.by_dtype[dtype] = (buf, words)
        return got

    def nbytes(self) -> int:
        return sum(b.numel() * b.element_size() for b, _ in self.by_dtype.values())


BUFFERS = _Buffers()
_SAME: dict[tuple[Any, ...], bool] = {}
_LOCK = threading.Lock()


def applies(x: torch.Tensor, enc: EncodedTensor, device: torch.device) -> bool:
    """Whether the run-by-run forward may serve ``x`` for this weight (else: the whole-weight path)."""
    dtype = getattr(torch, enc.dtype, None)
    return (device.type == "cpu" and x.device.type == "cpu" and dtype in _DTYPES and x.dtype == dtype
            and len(enc.shape) == 2 and min(enc.shape) > 0 and x.dim() > 0 and x.shape[-1] == enc.shape[1]
            and not torch.compiler.is_compiling())


def linear_runs(x: torch.Tensor, plan: RowPlan, bias: torch.Tensor | None, stamp: Any = None) -> torch.Tensor:
    """``F.linear(x, W, bias)`` computed run by run (no check of bit-identity: see ``linear``).

    The encoding is validated again unless ``stamp`` (e.g. the buffers' in-place version counters)
    is the one it was last validated with.
    """
    if stamp is None or stamp != plan.stamp:
        plan.enc.validate()  # the arrays may have been rewritten in place since the plan was made
        plan.stamp = stamp
    buf, words = BUFFERS.get(x.dtype, plan.scratch_elements)
    threads = RUN_THREADS
    decode = plan.decoder.decode
    x2, add_bias = _folded(x, bias)
    parts = []
    for move, first, hi, out, w, r0, r1 in plan.steps(buf, words):
        if move is not None:  # the block shared with the previous run: moved, not decoded again
            move[0].copy_(move[1])
        if hi > first:
            decode(first, hi, out, threads)
        parts.append(F.linear(x2, w, None if bias is None or add_bias else bias[r0:r1]))
    y = parts[0] if len(parts) == 1 else torch.cat(parts, dim=-1)
    if add_bias:
        y.add_(bias)
    return y if y.dim() == x.dim() else y.view(*x.shape[:-1], plan.n)


def _folded(x: torch.Tensor, bias: torch.Tensor | None) -> tuple[torch.Tensor, bool]:
    """``x`` as the 2-D matrix torch multiplies, and whether the bias is added after the product.

    A loaded model's Linear weight is a Parameter that requires grad (transformers' default, so
    also decode="load"), and then ``F.linear`` on a 3-D input always folds it to 2-D and calls
    ``mm`` (``addmm`` for a contiguous input with a bias; ``mm`` then ``add_`` for a strided one).
    On a plain tensor it folds only an input whose leading dimensions are contiguous: a strided one
    (the last position of each sequence, ``logits_to_keep=1``) goes to a batched product that is
    70x slower and rounds differently. So the runs (and the fallback) follow the Parameter's rules.
    """
    if x.dim() <= 2:
        return x, False
    return x.reshape(-1, x.shape[-1]), bias is not None and not x.is_contiguous()


def like_loaded(x: torch.Tensor, w: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """``F.linear(x, w, bias)`` computed as for a weight that is a Parameter requiring grad (``_folded``)."""
    x2, add_bias = _folded(x, bias)
    y = F.linear(x2, w, None if add_bias else bias)
    if add_bias:
        y.add_(bias)
    return y if y.dim() == x.dim() else y.view(*x.shape[:-1], w.shape[0])


def linear(x: torch.Tensor, plan: RowPlan, bias: torch.Tensor | None, whole: Callable[[], torch.Tensor],
           fresh: Callable[[], torch.Tensor], stamp: Any = None) -> torch.Tensor:
    """``F.linear(x, W, bias)`` as decode="load" computes it (``like_loaded``), run by run when that
    was found bit-identical in this setting.

    ``whole()`` returns the fully decoded weight in the layers' shared scratch (the fallback);
    ``fresh()`` in new memory, released after the check (so a check does not grow the scratch);
    ``stamp``: see ``linear_runs``.
    """
    key = plan.key(x, bias)
    same = _SAME.get(key)
    if same is False:
        return like_loaded(x, whole(), bias)
    out = linear_runs(x, plan, bias, stamp)
    if same is None:
        want = like_loaded(x, fresh(), bias)
        ok = out.shape == want.shape and torch.equal(_bits(out), _bits(want))
        with _LOCK:
            _SAME.setdefault(key, ok)
        if not ok:
            return want
    return out


def _bits(t: torch.Tensor) -> torch.Tensor:
    return t.detach().contiguous().view(_WORDS[t.dtype]) if t.dtype in _WORDS else t.detach()


def words_of(t: torch.Tensor) -> np.ndarray:
    """The words a span decoder writes for contiguous CPU tensor ``t`` (bytes for non-float dtypes)."""
    flat = t.reshape(-1)
    word = _WORDS.get(t.dtype)
    if word is None:
        return flat.view(torch.uint8).numpy()
    return flat.view(word).numpy().view(_NP_WORDS[word])


def decode_into(enc: EncodedTensor, out: torch.Tensor) -> torch.Tensor:
    """Every block of ``enc`` into ``out`` (contiguous, CPU, its dtype and shape), without the checksum,
    on torch's thread count."""
    enc.validate()
    SpanDecoder(enc).decode(0, enc.index.shape[0] - 1, words_of(out), torch.get_num_threads())
    return out


def fallbacks() -> list[tuple[Any, ...]]:
    """Settings (see ``RowPlan.key``) where runs were not bit-identical and the whole weight is used."""
    return [k for k, ok in _SAME.items() if not ok]


def scratch_nbytes() -> int:
    """Bytes held by this thread's run buffers."""
    return BUFFERS.nbytes()
