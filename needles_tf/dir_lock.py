"""One writer at a time in a directory: an advisory lock held for the writer's lifetime.

Two `needles-train` runs on one --model_dir would interleave checkpoints and histories, each
believing it resumes the other. The lock is `flock` on a file in the directory, so the kernel
releases it when its holder exits, however it exits (kill -9 included): no stale lock to clear.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import warnings
from typing import Iterator

LOCK_FILE = ".lock"
UNSUPPORTED = (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS)


class DirectoryBusy(RuntimeError):
    """Another live process holds the directory."""


@contextlib.contextmanager
def exclusive(directory: str) -> Iterator[None]:
    """Holds `directory` (which must exist) for the block.

    Raises:
      DirectoryBusy: another process holds it; the message names the directory and the
        holder's process id.
    """
    fd = os.open(os.path.join(directory, LOCK_FILE), os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            raise DirectoryBusy(
                f"{directory} is in use by another process (pid {holder}); wait for it to "
                "finish or stop it, or use another directory") from None
        except OSError as e:  # a file system without locks (some network mounts)
            if e.errno not in UNSUPPORTED:
                raise
            warnings.warn(f"{directory}: the file system does not support locks "
                          f"({e.strerror}); nothing stops a second process writing there",
                          stacklevel=3)
        else:
            os.ftruncate(fd, 0)
            os.pwrite(fd, str(os.getpid()).encode(), 0)
        yield
    finally:
        os.close(fd)  # releases the lock
