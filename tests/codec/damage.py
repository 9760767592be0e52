"""Shared fixtures for the damaged-stream tests: small base streams, tampering, outcomes."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace

import numpy as np
import torch

from llmcomp_hf.codec import EncodedTensor, FormatError, decode, encode

from . import spec
from .helpers import bits, from_bits, make_bits, tensor_of

BS = 256


def _mixed_fp16() -> torch.Tensor:
    """Block 0 constant, block 1 uniform (raw), block 2 weight-like (coded), partial block 3."""
    rng = np.random.default_rng(31)
    w = np.concatenate([np.full(BS, 0x3C00), make_bits("float16", BS, "uniform", rng),
                        make_bits("float16", BS + 77, "specials", rng)])
    return from_bits(w, "float16")


BASES = {
    "bf16-huffman": (lambda: tensor_of("bfloat16", 2 * BS + 190, "skewed", 32), "huffman"),
    "bf16-rans": (lambda: tensor_of("bfloat16", 2 * BS + 190, "skewed", 32), "rans"),
    "fp32-huffman": (lambda: tensor_of("float32", BS + 100, "specials", 33), "huffman"),
    "int8-rans": (lambda: tensor_of("int8", 2 * BS + 3, "skewed", 34), "rans"),
    "fp16-mixed-huffman": (_mixed_fp16, "huffman"),
    "fp16-mixed-rans": (_mixed_fp16, "rans"),
    "bool-raw": (lambda: tensor_of("bool", BS + 9, "skewed", 35), "raw"),
    "bf16-rans-ctx": (lambda: tensor_of("bfloat16", 2 * BS + 190, "skewed", 32), "rans-ctx"),
    "fp32-rans-ctx": (lambda: tensor_of("float32", 3 * BS + 100, "skewed", 37), "rans-ctx"),
    "fp16-mixed-rans-ctx": (_mixed_fp16, "rans-ctx"),
}


def base(name: str) -> tuple[torch.Tensor, EncodedTensor]:
    make, coder = BASES[name]
    t = make()
    return t, encode(t, coder=coder, block_size=BS, name=f"{name}.weight")


def tampered(enc: EncodedTensor, data: np.ndarray | None = None, index: np.ndarray | None = None,
             header: dict | None = None) -> EncodedTensor:
    """A copy with some parts replaced, built WITHOUT validation (decode must validate)."""
    return replace(enc, header=dict(enc.header if header is None else header),
                   data=enc.data.copy() if data is None else data,
                   index=enc.index.copy() if index is None else index)


def outcome(enc: EncodedTensor, want: torch.Tensor, verify: bool = True) -> str:
    """'exact', 'raised', 'different' (acceptable only with verify=False) or a description of a
    failure: a foreign exception, an unnamed error, a wrong dtype/shape."""
    try:
        got = decode(enc, verify=verify)
    except FormatError as exc:
        if enc.name is not None and enc.name not in str(exc):
            return f"error does not name the tensor: {exc}"
        return "raised"
    except Exception as exc:  # noqa: BLE001 - reported as a test failure
        return f"foreign {type(exc).__name__}: {str(exc)[:120]!r}"
    if got.dtype != want.dtype or tuple(got.shape) != tuple(want.shape):
        return f"returned {got.dtype} {tuple(got.shape)}"
    return "exact" if np.array_equal(bits(got), bits(want)) else "different"


class Problems(list):
    """Collects every violation of a sweep, then fails once with a summary."""

    def expect(self, got: str, allowed: tuple[str, ...], what: str) -> None:
        if got not in allowed:
            self.append(f"{what}: {got}")

    def check(self) -> None:
        assert not self, f"{len(self)} problems, first ones:\n" + "\n".join(self[:12])


def flip(enc: EncodedTensor, pos: int, mask: int) -> EncodedTensor:
    data = enc.data.copy()
    data[pos] ^= mask
    return tampered(enc, data=data)


def field_positions(enc: EncodedTensor) -> Iterator[tuple[spec.Section, str, int]]:
    """(section, field, byte position): first, middle and last byte of every field."""
    for blk in spec.parse(enc.header, enc.data, enc.index):
        for sec in blk:
            for fname, (at, size) in sec.fields.items():
                for pos in sorted({at, at + size // 2, at + size - 1} if size else set()):
                    yield sec, fname.rstrip("0123"), pos
