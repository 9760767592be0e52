"""The thread pool of the codec's many-task calls: tasks pulled from one queue by the calling thread
and pooled threads (single-threaded kernels that release the GIL)."""

from __future__ import annotations

import threading
from typing import Any, Callable

_POOL_LOCK = threading.Lock()


def thread_count(threads: int | None) -> int:
    import numba

    return numba.config.NUMBA_NUM_THREADS if threads is None else max(1, int(threads))


def run_parallel(tasks: list[Callable[[], None]], count: int) -> None:
    """Run ``tasks`` on ``count`` threads (the caller and pooled ones) pulling from one queue.

    Tasks call single-threaded kernels, which release the GIL. Compared with numba's parallel loop
    (OpenMP), this degrades gracefully when the cores are shared, where a parallel region waits for
    its slowest thread (a 9-block bf16 tensor at 2 threads on a busy 2-core machine: 1773 vs
    182 MB/s median); on an idle machine it only pays for work spread over many tensors or groups.
    """
    if count == 1 or len(tasks) <= 1:
        for task in tasks:
            task()
        return
    cond = threading.Condition()
    state: dict[str, Any] = {"next": 0, "left": len(tasks), "error": None}

    def work() -> None:
        while True:
            with cond:
                i = state["next"]
                if i >= len(tasks):
                    return
                state["next"] = i + 1
            try:
                tasks[i]()
            except BaseException as exc:  # re-raised on the caller's thread
                with cond:
                    state["error"] = state["error"] or exc
            finally:
                with cond:
                    state["left"] -= 1
                    if not state["left"]:
                        cond.notify_all()

    executor = pool(count - 1)
    for _ in range(min(count, len(tasks)) - 1):
        executor.submit(work)
    work()
    with cond:  # wait for the tasks, not for helper threads that woke too late to take one
        while state["left"]:
            cond.wait()
    if state["error"] is not None:
        raise state["error"]


_POOLS: dict[int, Any] = {}


def pool(workers: int) -> Any:
    """A long-lived thread pool per size, so each worker keeps its decode scratch between calls."""
    from concurrent.futures import ThreadPoolExecutor

    with _POOL_LOCK:
        if workers not in _POOLS:
            _POOLS[workers] = ThreadPoolExecutor(workers, thread_name_prefix="llmcomp")
        return _POOLS[workers]
