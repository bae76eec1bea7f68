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


class DyingSlide:
    """A slide source whose use in a worker process kills that process (as the OOM killer
    would while a slide is read); in the process that made it, it is inert."""

    def __init__(self, name: str):
        self._name = name
        self._creator = os.getpid()

    def __getattr__(self, attribute: str):  # name, path, split, ...: what a planner reads
        if not attribute.startswith("_") and os.getpid() != self._creator:
            os.kill(os.getpid(), signal.SIGKILL)
        raise AttributeError(attribute)
