"""The short fixed-seed fuzz pass of CI: a few thousand mutated encoded tensors and a hundred mutated
checkpoints through every loader, in a worker process (crashes and hangs are caught and pinned on
their input). The long campaign is ``python -m tests.fuzz.campaign`` (see its docstring)."""

from __future__ import annotations

from .repro import save_failures
from .runner import run_range
from .targets_codec import UPSTREAM

CODEC_INPUTS, CHECKPOINT_INPUTS = 2000, 80


def _check(tally, tmp_path, campaign: int, root: str = "") -> None:
    ours = [f for f in tally.failures if f.outcome != UPSTREAM]  # transformers' own errors: reported, not ours
    tally.failures = ours
    lines = save_failures(tmp_path / "fuzz-failures", tally, campaign, root)
    assert not lines, f"{len(lines)} fuzz failures (reproducers saved):\n" + "\n".join(lines[:20])


def test_the_worker_pins_crashes_and_hangs_on_their_input():
    tally = run_range("selftest", 0, 0, 6, timeout=3)
    got = {(f.i, f.outcome) for f in tally.failures}
    assert got == {(1, "crash"), (2, "hang"), (3, "foreign")}, tally.failures
    assert tally.restarts == 2 and tally.counts[("selftest", "identical")] == 3


def test_codec_inputs(tmp_path):
    tally = run_range("codec", 0, 0, CODEC_INPUTS, timeout=30)
    assert tally.total() == CODEC_INPUTS
    assert {t for t, _ in tally.counts} == {"decode", "decode_rows", "decode_many"}
    _check(tally, tmp_path, 0)


def test_checkpoint_inputs(fuzz_checkpoints, tmp_path):
    root = str(fuzz_checkpoints["lossless"].parent)
    tally = run_range("checkpoint", 0, 0, CHECKPOINT_INPUTS, root=root, timeout=120, chunk=CHECKPOINT_INPUTS)
    assert tally.total() == CHECKPOINT_INPUTS
    _check(tally, tmp_path, 0, root)
