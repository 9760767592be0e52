"""The parent of a fuzz run: feeds input numbers to a worker process under an address-space limit and
a per-input timeout, restarts it after a crash or a hang, and counts outcomes per target."""

from __future__ import annotations

import json
import os
import resource
import select
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from .targets_codec import ALLOWED, CRASH, HANG

# Measured: codec and checkpoint workers (torch, numba kernels, transformers) start and run under 3 GiB
# of address space; 4 GiB leaves room and still stops a decoder allocating a bomb's declared size.
# FUZZ_ADDRESS_GIB overrides it.
ADDRESS_LIMIT = int(float(os.environ.get("FUZZ_ADDRESS_GIB", "4")) * (1 << 30))
REPO = Path(__file__).resolve().parents[2]


@dataclass
class Failure:
    kind: str
    i: int
    target: str
    outcome: str
    detail: str


@dataclass
class Tally:
    counts: Counter = field(default_factory=Counter)  # (target, outcome) -> inputs
    failures: list[Failure] = field(default_factory=list)
    restarts: int = 0

    def total(self) -> int:
        return sum(self.counts.values())


def _limit() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (ADDRESS_LIMIT, ADDRESS_LIMIT))
    os.setsid()


class Worker:
    def __init__(self, kind: str, campaign: int, root: str, boundscheck: bool, startup_s: float = 600) -> None:
        read, write = os.pipe()
        env = dict(os.environ, FUZZ_FD=str(write), NUMBA_NUM_THREADS="1", OMP_NUM_THREADS="1",
                   TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1", TRANSFORMERS_VERBOSITY="error")
        if boundscheck:  # cached kernels were compiled without checks: compile into a cache of their own
            env["NUMBA_BOUNDSCHECK"] = "1"
            env["NUMBA_CACHE_DIR"] = str(REPO / "fuzz-failures" / "numba-boundscheck-cache")
        self.log = tempfile.TemporaryFile()  # the worker's stderr: its tail explains a crash
        self.proc = subprocess.Popen([sys.executable, "-m", "tests.fuzz.worker", kind, str(campaign), root],
                                     cwd=REPO, env=env, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                     stderr=self.log, pass_fds=(write,), preexec_fn=_limit, text=True)
        os.close(write)
        self.fd, self.buf = read, b""
        if self.line(startup_s) != "R":
            self.kill()
            raise RuntimeError(f"the {kind} fuzz worker did not start (rc {self.proc.poll()})")

    def line(self, timeout: float) -> str | None:
        """The next protocol line; None on EOF (the worker died) or timeout (``self.timed_out``)."""
        self.timed_out = False
        end = time.monotonic() + timeout
        while b"\n" not in self.buf:
            left = end - time.monotonic()
            if left <= 0 or not select.select([self.fd], [], [], left)[0]:
                self.timed_out = True
                return None
            chunk = os.read(self.fd, 1 << 16)
            if not chunk:
                return None
            self.buf += chunk
        line, self.buf = self.buf.split(b"\n", 1)
        return line.decode()

    def stderr_tail(self, n: int = 300) -> str:
        self.log.seek(0)
        lines = [line for line in self.log.read().decode(errors="replace").splitlines() if line.strip()]
        return " / ".join(lines[-3:])[-n:]

    def kill(self) -> None:
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait()
        os.close(self.fd)


def run_range(kind: str, campaign: int, lo: int, hi: int, *, root: str = "", timeout: float = 10.0,
              boundscheck: bool = False, tally: Tally | None = None, chunk: int = 2000,
              progress=None) -> Tally:
    """Run inputs ``lo..hi-1`` of one campaign; a crashed or hung worker is replaced and the run goes on."""
    tally = tally or Tally()
    worker: Worker | None = None
    i = lo
    while i < hi:
        if worker is None:
            worker = Worker(kind, campaign, root, boundscheck)
        end = min(hi, i + chunk)
        worker.proc.stdin.write(f"{i} {end}\n")
        worker.proc.stdin.flush()
        current, target, nxt = None, "?", i  # nxt: the input after the last one done
        while True:
            line = worker.line(timeout)
            if line is None:  # died or hung on ``current``
                outcome = HANG if worker.timed_out else CRASH
                rc = None if worker.timed_out else worker.proc.wait()
                worker.kill()
                rc = f"{rc}; stderr: {worker.stderr_tail()}"
                worker, tally.restarts = None, tally.restarts + 1
                at = current if current is not None else nxt  # died between inputs: the next one's generation
                tally.counts[(target, outcome)] += 1
                tally.failures.append(Failure(kind, at, target, outcome, f"worker {outcome} (rc {rc})"))
                i = at + 1
                break
            if line == "E":
                i = end
                break
            tag, rest = line.split(" ", 1)
            if tag == "S":
                num, target = rest.split(" ", 1)
                current = int(num)
                continue
            num, target, outcome, detail = rest.split(" ", 3)
            tally.counts[(target, outcome)] += 1
            if outcome not in ALLOWED:
                tally.failures.append(Failure(kind, int(num), target, outcome, json.loads(detail)))
            current, nxt = None, int(num) + 1
        if progress:
            progress(tally, i)
    if worker is not None:
        worker.proc.stdin.close()
        worker.kill()
    return tally
