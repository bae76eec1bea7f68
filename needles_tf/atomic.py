"""Atomic file writes: write under a temporary name beside the target, then rename.

Readers never see half a file, and a kill leaves either the old file or the new one.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import re
from typing import Any, Iterator


@contextlib.contextmanager
def atomic_path(path: str, suffix: str = "") -> Iterator[str]:
    """Yields a temporary file name beside `path` (ending in `suffix`, for writers that check
    extensions); renames it to `path` when the block succeeds, removes it when it fails."""
    tmp = f"{path}.tmp-{os.getpid()}{suffix}"
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


_TMP_RE = re.compile(r"\.tmp-(\d+)(\.[\w.]+)?$")


def remove_stale_temporaries(directory: str) -> list[str]:
    """Removes the temporaries that killed writers left in `directory` (their process is gone);
    returns their paths. A temporary of a live process (another writer) is left alone."""
    removed = []
    for path in glob.glob(os.path.join(glob.escape(directory), "*.tmp-*")):
        found = _TMP_RE.search(path)
        if found and not process_alive(int(found.group(1))):
            with contextlib.suppress(FileNotFoundError):
                os.remove(path)
                removed.append(path)
    return removed


def process_alive(pid: int) -> bool:
    """Whether process `pid` exists (on this machine)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user
        return True
    return True


def write_text(path: str, text: str) -> None:
    with atomic_path(path) as tmp, open(tmp, "w") as f:
        f.write(text)


def write_bytes(path: str, data: bytes) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        f.write(data)


def write_json(path: str, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=1, sort_keys=True) + "\n")
