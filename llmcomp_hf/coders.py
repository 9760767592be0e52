"""The one registry of lossless coders: name -> section mode, default min gain, format version,
CUDA support and reference encoder (docs/format.md, part 1).

Everything that accepts or checks a coder name (``config.py``, ``codec/api.py``, ``blocks.py``,
``encoded.py``, ``reference.py``, the CLI) reads it from here, so a new coder is one entry.
Importing this module imports nothing else of the package.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Coder:
    """One coder.

    ``mode``: the section mode its coded planes use (for a context coder, the plane-0 mode of a
    float; its other planes use ``rans``). ``min_gain``: default share of a plane's raw size a coded
    section must save. ``version``: the format version its encoder writes; ``min_version``: the
    oldest version a stream of it may carry. ``context_modes``: plane-0 modes (decoded after plane
    1) allowed in its streams from version 3. ``cuda``: the CUDA decoder reads its streams.
    ``reference``: the reference encoder's plane coder (``llmcomp_hf.codec.reference``).
    """

    name: str
    mode: int
    min_gain: float
    version: int
    min_version: int
    context_modes: tuple[int, ...]
    cuda: bool
    reference: str
    summary: str


MODE_RAW, MODE_CONST, MODE_HUFFMAN, MODE_RANS, MODE_RANS_CTX, MODE_RANS_SCALE = 0, 1, 2, 3, 4, 5
CONTEXT_MODES = (MODE_RANS_CTX, MODE_RANS_SCALE)  # plane-0 modes that read plane 1

CODERS: dict[str, Coder] = {
    c.name: c
    for c in (
        # Huffman: a plane saving < 3% stays raw (bf16's sign+mantissa byte saves ~0.4%): not worth the decode time.
        Coder("huffman", MODE_HUFFMAN, 0.03, 3, 1, (), True, "huffman", "fastest decode (default)"),
        Coder("rans", MODE_RANS, 0.0, 3, 1, (), True, "rans", "interleaved rANS: smaller, a little slower"),
        Coder("rans-ctx", MODE_RANS_CTX, 0.0, 3, 2, (MODE_RANS_CTX,), False, "rans-ctx",
              "rANS, exponent in context of the top mantissa bits"),
        Coder("rans-scale", MODE_RANS_SCALE, 0.0, 4, 4, (MODE_RANS_SCALE,), False, "rans-scale",
              "rANS, exponent in context of its row's and column's scale; per tensor the smaller of this and rans-ctx"),
        Coder("raw", MODE_RAW, 0.0, 3, 1, (), True, "raw", "byte planes only"),
    )
}
NAMES = tuple(CODERS)
# What a checkpoint's config (and ``llmcomp compress --coder``) may name: every coder but ``raw``,
# which stores byte planes only (a codec-level choice, not a compression setting).
CHECKPOINT_CODERS = tuple(name for name in NAMES if name != "raw")
MAX_VERSION = max(c.version for c in CODERS.values())


def coder(name: str) -> Coder:
    """The registry entry of ``name``; ValueError naming the known coders otherwise."""
    try:
        return CODERS[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown coder {name!r}; choose one of {list(NAMES)}") from None


def context_modes_allowed(version: int, name: str) -> tuple[int, ...]:
    """Plane-0 context modes a stream of this (validated) version and coder may hold: mode 4 in
    version 2 whatever the coder (its original rule), the coder's own from version 3, none in 1."""
    if version == 2:
        return (MODE_RANS_CTX,)
    if version >= 3:
        return CODERS[name].context_modes
    return ()


def forbidden_mask(version: int, name: str) -> int:
    """Bit ``m`` set for each context mode ``m`` that is corrupt in such a stream (for kernels)."""
    allowed = context_modes_allowed(version, name)
    return sum(1 << m for m in CONTEXT_MODES if m not in allowed)
