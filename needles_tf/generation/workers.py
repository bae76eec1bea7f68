"""One process pool for the generators: ordered results, bounded memory, no hang on a dead worker.

Built on `concurrent.futures.ProcessPoolExecutor` (not `multiprocessing.Pool`, whose `imap`
waits forever when a worker is killed): a worker that dies raises `BrokenProcessPool` in the
caller. Workers start with the 'spawn' method, as TensorFlow is not fork-safe.
"""

from __future__ import annotations

import collections
import multiprocessing
from concurrent import futures
from typing import Any, Callable, Iterable, Iterator, Sequence

AHEAD_PER_WORKER = 4  # tasks in flight per worker: enough to keep workers busy, little memory


def worker_died(doing: str, kept: str) -> str:
    """The message for a BrokenProcessPool: what died doing what, what is kept, what to do."""
    return (f"a worker process died while {doing} (killed, perhaps out of memory); {kept}: "
            "re-run the same command to resume (fewer --workers need less memory)")


def map_in_processes(function: Callable[[Any], Any], tasks: Iterable[Any], workers: int,
                     initializer: Callable[..., None] | None = None,
                     initargs: Sequence[Any] = ()) -> Iterator[Any]:
    """Yields function(task) for each task, in order, computed by `workers` processes.

    With workers <= 1 everything runs in this process (after `initializer(*initargs)`), which
    keeps tracebacks simple and needs nothing picklable. Otherwise at most
    AHEAD_PER_WORKER * workers tasks are in flight, so results do not pile up in memory.

    Args:
        function: a picklable (module-level) function of one task.
        tasks: the tasks, each picklable.
        workers: number of processes.
        initializer: run once in each worker (and here when workers <= 1).
        initargs: its arguments, pickled once per worker.

    Yields:
        The results, in the order of `tasks`.

    Raises:
        concurrent.futures.process.BrokenProcessPool: a worker died (killed, out of memory).
        Exception: whatever `function` raised in a worker.
    """
    if workers <= 1:
        if initializer is not None:
            initializer(*initargs)
        yield from map(function, tasks)
        return
    pool = futures.ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"),
                                       initializer=initializer, initargs=tuple(initargs))
    pending: collections.deque[futures.Future] = collections.deque()
    try:
        for task in tasks:
            pending.append(pool.submit(function, task))
            if len(pending) >= AHEAD_PER_WORKER * workers:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
