"""Process-wide settings that TensorFlow reads once, when it starts.

oneDNN's AVX-512 convolution kernels crash (SIGSEGV in the backward pass) on some CPUs for the
shapes this project trains, e.g. an RF-33 BagNet at s = 1/8, 64 x 64, batch 32 (measured on an
AMD EPYC with avx512f/bf16/vnni/vp2intersect; `ONEDNN_MAX_CPU_ISA=AVX512_CORE` still crashes).
On a CPU without AVX-512 those kernels can never run, so oneDNN stays on at full speed. On a CPU
with AVX-512 the package turns oneDNN's TensorFlow ops off (`TF_ENABLE_ONEDNN_OPTS=0`): measured
there at 0.86x the speed of oneDNN on, against 0.71x for capping oneDNN at AVX2 (README, "CPU
safety"). A user who sets either variable keeps their own choice. The variables are read when
TensorFlow starts, so `needles_tf/__init__.py` applies this before anything imports TensorFlow.
"""

from __future__ import annotations

import os
from collections.abc import MutableMapping

ONEDNN_VARIABLES = ("TF_ENABLE_ONEDNN_OPTS", "ONEDNN_MAX_CPU_ISA")
CPUINFO = "/proc/cpuinfo"


def cpu_flags(cpuinfo: str = CPUINFO) -> frozenset[str]:
    """The CPU feature flags (lower case, e.g. 'avx2', 'avx512f').

    Read from /proc/cpuinfo on Linux, elsewhere from NumPy's own runtime CPU-feature table.
    """
    try:
        with open(cpuinfo) as f:
            for line in f:
                if line.startswith("flags"):
                    return frozenset(line.partition(":")[2].split())
    except OSError:
        pass
    try:
        from numpy._core._multiarray_umath import __cpu_features__
    except ImportError:  # NumPy < 2
        from numpy.core._multiarray_umath import __cpu_features__
    return frozenset(name.lower() for name, present in __cpu_features__.items() if present)


def configure_onednn(environ: MutableMapping[str, str] = os.environ,
                     flags: frozenset[str] | None = None) -> str:
    """Chooses the oneDNN setting for this CPU, unless the user chose one; returns what holds.

    Args:
      environ: the environment to read and update (the process's own by default).
      flags: the CPU's feature flags (read from the machine by default).

    Returns:
      A one-line description of the oneDNN setting in force, for logs and summaries.
    """
    chosen = {name: environ[name] for name in ONEDNN_VARIABLES if name in environ}
    if chosen:
        return "user: " + ", ".join(f"{k}={v}" for k, v in chosen.items())
    if "avx512f" in (cpu_flags() if flags is None else flags):
        environ["TF_ENABLE_ONEDNN_OPTS"] = "0"
        return "TF_ENABLE_ONEDNN_OPTS=0 (AVX-512 CPU: oneDNN's AVX-512 convolutions can crash)"
    return "oneDNN on (no AVX-512 on this CPU)"

