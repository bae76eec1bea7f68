"""A picklable make_example for the generator's process pool that dies at one image.

Its own small module (no TensorFlow import), so spawned workers start fast.
"""

import os
import signal


class DieAt:
    """Kills its worker process (as the OOM killer would) when asked for image `index`."""

    def __init__(self, index: int | None):
        self.index = index

    def __call__(self, split: str, index: int) -> tuple[bytes, int]:
        if index == self.index:
            os.kill(os.getpid(), signal.SIGKILL)
        return f"{split} {index}".encode(), index % 2
