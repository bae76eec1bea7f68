"""Keeps TensorFlow's start-up notices out of the binaries' output.

TensorFlow's native code logs "Could not find cuda drivers", "failed call to cuInit", "All log
messages before absl::InitializeLog()" and, where oneDNN is on (ARM, or a user's
`TF_ENABLE_ONEDNN_OPTS=1`), "oneDNN custom operations are on" straight to file
descriptor 2 whatever TF_CPP_MIN_LOG_LEVEL says. The binaries pass their stderr through a pipe
that drops exactly those lines and forwards everything else at once (progress bars included).
The CUDA lines are dropped only where no NVIDIA driver is loaded: with a driver they explain
why a GPU is not used. The oneDNN notice only restates a setting the summary records.
"""

from __future__ import annotations

import contextlib
import faulthandler
import os
import re
import sys
import threading
from collections.abc import Iterator

NVIDIA_DRIVER = "/proc/driver/nvidia"
CUDA_NOISE = re.compile(
    rb"^(WARNING: All log messages before absl::InitializeLog\(\) is called"
    rb"|[IWE]\d{4} [\d:. ]+ +\d+ (cudart_stub|cuda_platform|cuda_executor|cuda_diagnostics"
    rb"|cuda_driver|gpu_device)\.cc:\d+\] )")
ONEDNN_NOTICE = re.compile(rb"^I\d{4} [\d:. ]+ +\d+ port\.cc:\d+\] oneDNN custom operations are on")
LOG_LINE_START = re.compile(rb"^[IWEF]")  # a partial line that may become a dropped one


def _pump(read_fd: int, write_fd: int, drop: re.Pattern) -> None:
    """Copies read_fd to write_fd until end of file, leaving out whole lines matching `drop`."""
    pending = b""
    while chunk := os.read(read_fd, 1 << 16):
        *lines, pending = (pending + chunk).split(b"\n")
        out = b"".join(line + b"\n" for line in lines if not drop.match(line))
        if pending and not LOG_LINE_START.match(pending):
            out, pending = out + pending, b""
        if out:
            os.write(write_fd, out)
    if pending:
        os.write(write_fd, pending)


def start_up_noise() -> re.Pattern:
    """The lines to drop on this machine: the oneDNN notice, and the CUDA probe's lines where
    no NVIDIA driver is loaded."""
    if os.path.exists(NVIDIA_DRIVER):
        return ONEDNN_NOTICE
    return re.compile(CUDA_NOISE.pattern + b"|" + ONEDNN_NOTICE.pattern)


@contextlib.contextmanager
def quiet_start_up(drop: re.Pattern | None = None) -> Iterator[None]:
    """Within the block, file descriptor 2 (native and Python stderr) goes through the filter
    (`drop`, by default `start_up_noise()`). A fatal signal's traceback (faulthandler) goes to
    the real stderr, so a crash is never hidden.
    """
    drop = start_up_noise() if drop is None else drop
    sys.stderr.flush()
    real_stderr = os.dup(2)
    read_fd, write_fd = os.pipe()
    os.dup2(write_fd, 2)
    os.close(write_fd)
    faulthandler.enable(file=real_stderr)
    pump = threading.Thread(target=_pump, args=(read_fd, real_stderr, drop), daemon=True)
    pump.start()
    try:
        yield
    finally:
        sys.stderr.flush()
        os.dup2(real_stderr, 2)  # closes the pipe's last write end here: the pump sees EOF
        pump.join(timeout=5)
        faulthandler.enable(file=sys.stderr)
        if not pump.is_alive():  # else a child process still holds the pipe: leave it be
            os.close(read_fd)
        os.close(real_stderr)
