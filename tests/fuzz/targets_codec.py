"""Codec-level targets: decode, decode_rows, decode_many of one mutated encoded tensor, judged."""

from __future__ import annotations

import json
import traceback

import numpy as np
import torch

from llmcomp_hf.errors import LlmcompError

from .mutate_codec import CodecInput, mutate
from .seeds import CodecSeed

CODEC_TARGETS = ("decode", "decode_rows", "decode_many")
# outcomes: the first three are allowed, every other one is a failure
IDENTICAL, ERROR, UNVERIFIED = "identical", "error", "unverified"
FOREIGN, SILENT = "foreign", "silent-wrong"
UPSTREAM = "foreign-upstream"  # raised by transformers before any llmcomp_hf code ran (reported, not ours)
CRASH, HANG = "crash", "hang"
ALLOWED = (IDENTICAL, ERROR, UNVERIFIED, "declined")


def codec_input(seeds: list[CodecSeed], campaign: int, i: int) -> tuple[str, CodecInput]:
    """Input ``i`` of campaign seed ``campaign`` (the same on every machine and in every process)."""
    rng = np.random.default_rng([campaign, i, 1])
    target = CODEC_TARGETS[int(rng.integers(len(CODEC_TARGETS)))]
    return target, mutate(seeds, int(rng.integers(len(seeds))), rng)


def foreign(exc: BaseException) -> tuple[str, str]:
    """(outcome, detail) of an exception that is not an LlmcompError, with where it was raised."""
    frames = traceback.extract_tb(exc.__traceback__)
    ours = [f for f in frames if "llmcomp_hf" in f.filename and "/tests/" not in f.filename]
    last = frames[-1] if frames else None
    at = f" at {last.filename.split('site-packages/')[-1]}:{last.lineno}" if last else ""
    if ours:
        at += f" (last llmcomp_hf frame {ours[-1].filename.split('llmcomp_hf/')[-1]}:{ours[-1].lineno} {ours[-1].name})"
    outcome = FOREIGN if ours or not any("transformers" in f.filename for f in frames) else UPSTREAM
    return outcome, f"{type(exc).__name__}: {str(exc)[:200]}{at}"


def same_bits(got: torch.Tensor, want: torch.Tensor) -> bool:
    if got.dtype != want.dtype or tuple(got.shape) != tuple(want.shape):
        return False
    return bool(torch.equal(got.contiguous().view(torch.uint8), want.contiguous().view(torch.uint8)))


def build(seed: CodecSeed, inp: CodecInput, direct: bool):
    """The EncodedTensor of an input: through ``from_parts`` (parses and validates), or, when the
    header is a JSON object, built without validation (the decode entry point must validate)."""
    from llmcomp_hf.codec import EncodedTensor

    data = np.frombuffer(inp.data, np.uint8).copy()
    index = np.frombuffer(inp.index[: len(inp.index) // 8 * 8], "<i8").astype(np.int64)
    name = seed.name.split(":")[0]
    if direct:
        try:
            header = json.loads(inp.header)
        except (ValueError, RecursionError):
            header = None
        if isinstance(header, dict):
            return EncodedTensor(header, data, index, name)
    return EncodedTensor.from_parts(inp.header, data, index, name=name)


def run_codec(seeds: list[CodecSeed], target: str, inp: CodecInput, direct: bool) -> tuple[str, str]:
    """(outcome, detail) of one input on one target."""
    from llmcomp_hf.codec import decode, decode_many
    from llmcomp_hf.codec.api import decode_rows

    seed = seeds[inp.seed]
    want = seed.tensor
    try:
        enc = build(seed, inp, direct)
        if target == "decode_rows":
            enc.validate()  # a loader calls check_declared first: rows follow the declared 2-D shape
            shape = enc.shape
            if len(shape) == 2 and shape[0] > 0:
                rows = torch.tensor([0, shape[0] - 1, shape[0] // 2, 0], dtype=torch.int64)
                got = decode_rows(enc, rows)
                full = len(want.shape) == 2 and tuple(want.shape) == shape
                if full and same_bits(got, want[rows]):
                    return IDENTICAL, ""
                return UNVERIFIED, "partial decode: no checksum"  # documented: rows are not verified
            target = "decode"
        if target == "decode_many":
            other = seeds[(inp.seed + 1) % len(seeds)]
            good = build(other, CodecInput(0, other.header, other.data, other.index, ""), False)
            got, got_other = decode_many([enc, good], threads=1)
            if not same_bits(got_other, other.tensor):
                return SILENT, "decode_many: the untouched neighbour decoded wrong"
        else:
            got = decode(enc, threads=1)
    except LlmcompError as exc:
        return ERROR, type(exc).__name__
    except Exception as exc:  # noqa: BLE001 - a foreign exception is what the fuzzer looks for
        return foreign(exc)
    if same_bits(got, want):
        return IDENTICAL, ""
    return SILENT, f"decoded {got.dtype} {tuple(got.shape)} without error, bits differ"
