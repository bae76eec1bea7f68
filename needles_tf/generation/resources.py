"""Memory and disk a generation needs, checked before any work: refuse in one line what cannot fit.

A generator estimates its own needs (bytes per worker, the writer's share, bytes on disk) and
calls `check_room`, which compares them with what this machine has now: the memory the kernel
says it can hand out without swapping (MemAvailable, and a cgroup's remaining limit when that
is lower) and the free space of the file system that will hold the output.
"""

from __future__ import annotations

import os
import shutil

GIB = 1 << 30


class NoRoom(ValueError):
    """A generation needs more memory or disk than there is; the message has the figures."""


def gib(num_bytes: float) -> str:
    """'37.3 GiB'."""
    return f"{num_bytes / GIB:.1f} GiB"


def available_memory() -> int:
    """Bytes that can be allocated now without swapping: /proc/meminfo's MemAvailable, or what
    is left of a cgroup's (v2 or v1) memory limit when that is lower; physical memory where
    /proc/meminfo is missing."""
    available = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    available = int(line.split()[1]) * 1024
    except OSError:
        pass
    for limit_file, usage_file in (("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
                                   ("/sys/fs/cgroup/memory/memory.limit_in_bytes",
                                    "/sys/fs/cgroup/memory/memory.usage_in_bytes")):
        try:
            with open(limit_file) as f, open(usage_file) as g:
                limit, usage = f.read().strip(), g.read().strip()
        except OSError:
            continue
        if limit.isdigit() and usage.isdigit():
            available = min(available, max(0, int(limit) - int(usage)))
    return available


def free_disk(path: str) -> int:
    """Free bytes on the file system that holds `path` (or would: its nearest existing parent)."""
    path = os.path.abspath(path)
    while not os.path.exists(path) and os.path.dirname(path) != path:
        path = os.path.dirname(path)
    return shutil.disk_usage(path).free


def check_room(subject: str, *, what: str, per_worker: int, workers: int, overhead: int,
               disk: int, output_dir: str, memory_helps: str, disk_helps: str) -> None:
    """Raises NoRoom, in one line with the figures, when memory or disk would not suffice.

    Args:
        subject: what the user asked for, e.g. "--canvas_size=200000".
        what: what one worker holds at its peak, e.g. "one canvas".
        per_worker: peak bytes of one worker process.
        workers: worker processes running at once.
        overhead: bytes the main process holds for the work (e.g. results in flight).
        disk: bytes the output still needs at `output_dir`.
        output_dir: where the output goes.
        memory_helps, disk_helps: what the user can change when memory / disk is short,
            e.g. "fewer --workers need less memory".

    Raises:
        NoRoom: the memory of `workers` workers plus `overhead` exceeds the available memory,
            or `disk` exceeds the free space at `output_dir`.
    """
    problems, helps = [], []
    memory = available_memory()
    if workers * per_worker + overhead > memory:
        helps.append(memory_helps)
        problems.append(f"{what} needs about {gib(per_worker)} per worker (x{workers} "
                        f"worker{'s' if workers > 1 else ''}, plus {gib(overhead)} in flight "
                        f"to the writer), {gib(memory)} are available")
    free = free_disk(output_dir)
    if disk > free:
        helps.append(disk_helps)
        problems.append(f"the dataset needs about {gib(disk)} on disk, {gib(free)} are free "
                        f"at {output_dir}")
    if problems:
        raise NoRoom(f"{subject}: {'; '.join(problems)}: {'; '.join(helps)}")
