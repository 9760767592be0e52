"""The child process of a fuzz run: runs many inputs in a loop, reporting each input's number to the
parent *before* running it, so a crash or a hang is pinned on that exact input.

Protocol (text lines): the parent writes ``<lo> <hi>`` on stdin; the child writes ``S <i> <target>`` before
input ``i`` and ``D <i> <target> <outcome> <detail as JSON>`` after it, on the file descriptor ``FUZZ_FD``,
then ``E`` when the range is done. ``R`` (ready) follows the start-up (imports, seeds, first kernels).
"""

from __future__ import annotations

import json
import os
import sys


def _codec_runner(campaign: int):
    from .seeds import codec_seeds
    from .targets_codec import codec_input, run_codec

    seeds = codec_seeds()
    for i in range(len(seeds)):  # load every kernel once before the clock starts
        run_codec(seeds, "decode", codec_input(seeds, campaign, i)[1], False)

    def prepare(i: int):
        target, inp = codec_input(seeds, campaign, i)
        return target, lambda: run_codec(seeds, target, inp, direct=bool(i & 1))

    return prepare


def _checkpoint_runner(campaign: int, root: str):
    from .targets_ckpt import CheckpointTargets, ckpt_input

    targets = CheckpointTargets(root)

    def prepare(i: int):
        inp = ckpt_input(targets.seeds, campaign, i)
        return inp.target, lambda: targets.run(inp)

    return prepare


def _selftest_runner():
    """Input 1 crashes the worker (SIGSEGV), input 2 hangs, the others pass: the harness's own test."""
    import signal
    import time

    def run(i: int) -> tuple[str, str]:
        if i == 1:
            os.kill(os.getpid(), signal.SIGSEGV)
        if i == 2:
            time.sleep(3600)
        if i == 3:
            return "foreign", "ValueError: planted"
        return "identical", ""

    return lambda i: ("selftest", lambda: run(i))


def main() -> None:
    kind, campaign, root = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    out = os.fdopen(int(os.environ["FUZZ_FD"]), "w", buffering=1)
    if kind == "selftest":
        prepare = _selftest_runner()
    else:
        import torch

        torch.set_num_threads(1)
        prepare = _codec_runner(campaign) if kind == "codec" else _checkpoint_runner(campaign, root)
    if os.environ.get("NUMBA_BOUNDSCHECK") == "1":
        import numba

        if not numba.config.BOUNDSCHECK:
            raise SystemExit("NUMBA_BOUNDSCHECK=1 was not taken up by numba")
    out.write("R\n")
    for line in sys.stdin:
        lo, hi = (int(v) for v in line.split())
        for i in range(lo, hi):
            try:
                target, run = prepare(i)
            except Exception as exc:  # noqa: BLE001 - a mutator bug is reported, not a worker crash
                target, run = "harness", lambda exc=exc: ("harness-error", f"{type(exc).__name__}: {exc}"[:300])
            out.write(f"S {i} {target}\n")
            outcome, detail = run()
            out.write(f"D {i} {target} {outcome} {json.dumps(detail)}\n")
        out.write("E\n")


if __name__ == "__main__":
    main()
