"""Lossless codec: float bit planes, entropy models and coders (Huffman, rANS), numba kernels.

Public API::

    enc = encode(tensor, coder="huffman")   # -> EncodedTensor (header dict + data/index arrays)
    out = decode(enc)                        # -> torch.Tensor, bit-identical to ``tensor``
"""

from __future__ import annotations

from llmcomp_hf.codec.api import decode, decode_many, encode, encode_many
from llmcomp_hf.codec.encoded import FORMAT_VERSION, EncodedTensor
from llmcomp_hf.errors import ChecksumMismatchError, CorruptStreamError, FormatError

__all__ = [
    "FORMAT_VERSION",
    "ChecksumMismatchError",
    "CorruptStreamError",
    "EncodedTensor",
    "FormatError",
    "decode",
    "decode_many",
    "encode",
    "encode_many",
]
