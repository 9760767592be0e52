"""Load-time choices that transformers does not pass through a third-party quantization config.

transformers keeps loading attributes of built-in configs only, so the decode mode is chosen with
a context manager around ``from_pretrained`` (or afterwards with ``keep_compressed``)::

    with llmcomp_hf.load_options(decode="on_the_fly"):
        model = AutoModel.from_pretrained("compressed-model")
"""

from __future__ import annotations

import contextvars
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

DECODE_MODES = ("load", "on_the_fly")


@dataclass(frozen=True)
class LoadOptions:
    """``decode``: ``"load"`` (decode once into ordinary weights) or ``"on_the_fly"`` (keep weights
    encoded in memory, decode each layer just before use). ``verify``: check every tensor's checksum
    while loading (on the fly: one full decode per tensor at load time)."""

    decode: str = "load"
    verify: bool = True

    def __post_init__(self) -> None:
        if self.decode not in DECODE_MODES:
            raise ValueError(f"decode must be one of {list(DECODE_MODES)}, got {self.decode!r}")
        if not isinstance(self.verify, bool):
            raise ValueError(f"verify must be True or False, got {self.verify!r}")


_CURRENT: contextvars.ContextVar[LoadOptions] = contextvars.ContextVar("llmcomp_load_options", default=LoadOptions())


def current() -> LoadOptions:
    """The options in force for loads started now."""
    return _CURRENT.get()


@contextmanager
def load_options(decode: str = "load", verify: bool = True) -> Iterator[LoadOptions]:
    """Set how llmcomp checkpoints load inside the ``with`` block (see module docstring)."""
    options = LoadOptions(decode=decode, verify=verify)
    token = _CURRENT.set(options)
    try:
        yield options
    finally:
        _CURRENT.reset(token)
