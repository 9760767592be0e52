"""The long fuzz campaign, run by hand:

    python -m tests.fuzz.campaign --codec 1000000 --checkpoint 10000 --seed 1 [--boundscheck]

Codec inputs (mutated MiniLM slices) and checkpoint inputs (mutated files of tiny compressed
checkpoints) run in one worker process at a time; failures are saved under ``--out`` (default
``fuzz-failures/``, git-ignored) with a one-line description each; counts per target and outcome are
printed at the end. Input ``i`` of seed ``S`` is the same everywhere: ``--start i --codec 1`` replays it.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from .repro import save_failures
from .runner import REPO, Tally, run_range
from .targets_codec import ALLOWED


def report(name: str, tally: Tally, seconds: float) -> None:
    print(f"== {name}: {tally.total()} inputs in {seconds:.0f} s ({tally.total() / max(seconds, 1e-9):.0f}/s), "
          f"{tally.restarts} worker restarts")
    targets = sorted({t for t, _ in tally.counts})
    outcomes = sorted({o for _, o in tally.counts}, key=lambda o: (o not in ALLOWED, o))
    print(f"{'target':<28}" + "".join(f"{o:>14}" for o in outcomes))
    for t in targets:
        print(f"{t:<28}" + "".join(f"{tally.counts.get((t, o), 0):>14}" for o in outcomes))
    print(f"{'all':<28}" + "".join(f"{sum(v for (_, o), v in tally.counts.items() if o == oc):>14}" for oc in outcomes))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tests.fuzz.campaign", description=__doc__.split("\n")[0])
    ap.add_argument("--codec", type=int, default=0, help="codec-level inputs")
    ap.add_argument("--checkpoint", type=int, default=0, help="checkpoint-level inputs")
    ap.add_argument("--seed", type=int, default=0, help="campaign seed")
    ap.add_argument("--start", type=int, default=0, help="first input number")
    ap.add_argument("--boundscheck", action="store_true", help="NUMBA_BOUNDSCHECK=1 in the worker")
    ap.add_argument("--out", default=str(REPO / "fuzz-failures"), help="folder for reproducers")
    ap.add_argument("--cache", default=str(REPO / "fuzz-failures" / "seeds"), help="seed checkpoints")
    args = ap.parse_args(argv)
    failures = []
    for kind, n, timeout in (("codec", args.codec, 20.0), ("checkpoint", args.checkpoint, 120.0)):
        if not n:
            continue
        root = ""
        if kind == "checkpoint":
            from .seeds import make_checkpoints

            root = str(Path(args.cache))
            make_checkpoints(Path(root))
        start = time.monotonic()
        last = [start]

        seen = [0]

        def progress(tally: Tally, i: int) -> None:
            for f in tally.failures[seen[0]:]:  # as they come: a long run can be stopped early
                print(f"  FAILURE {kind} input {f.i}: {f.target} {f.outcome} {f.detail}", file=sys.stderr, flush=True)
            seen[0] = len(tally.failures)
            if time.monotonic() - last[0] > 60:
                last[0] = time.monotonic()
                print(f"  {kind}: {i - args.start}/{n} done, {len(tally.failures)} failures", file=sys.stderr, flush=True)

        tally = run_range(kind, args.seed, args.start, args.start + n, root=root, timeout=timeout,
                          boundscheck=args.boundscheck, progress=progress, chunk=2000 if kind == "codec" else 50)
        report(f"{kind} seed {args.seed}{' boundscheck' if args.boundscheck else ''}", tally, time.monotonic() - start)
        failures += save_failures(Path(args.out), tally, args.seed, root)
    for line in failures:
        print("FAILURE", line)
    print(f"{len(failures)} failures")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
