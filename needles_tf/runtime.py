"""Process-wide settings that TensorFlow reads once, when it starts.

oneDNN, which TensorFlow can use for its CPU convolutions, is unsafe for this project's models
on x86 CPUs, in two ways measured here:

* AVX-512: its convolution kernels crash (SIGSEGV in the backward pass) for shapes this project
  trains, e.g. an RF-33 BagNet at s = 1/8, 64 x 64, batch 32 (an AMD EPYC with
  avx512f/bf16/vnni/vp2intersect; `ONEDNN_MAX_CPU_ISA=AVX512_CORE` still crashes).
* AVX2 (a 2-core AMD EPYC without AVX-512, `TF_ENABLE_ONEDNN_OPTS=1`): the kernel gradient of
  the strided 1x1 projection convolution (`stage1_block1_down_conv`) is wrong, 34-48 % from a
  float64 reference at every batch size, eager and compiled, and different from run to run;
  with oneDNN off it is within 1e-7 (tests/test_numerics.py guards this).

So on every x86 CPU the package turns oneDNN's TensorFlow ops off (`TF_ENABLE_ONEDNN_OPTS=0`):
TensorFlow already leaves them off on CPUs without AVX-512 VNNI/BF16 or AMX, so nothing changes
there; on AVX-512 machines it costs 14 % of the speed (0.86x, against 0.71x for capping oneDNN
at AVX2; README, "CPU safety"). On other architectures TensorFlow's default holds. A user who
sets either variable keeps their own choice. The variables are read when TensorFlow starts, so
`needles_tf/__init__.py` applies this before anything imports TensorFlow.
"""

from __future__ import annotations

import os
import platform
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
                     flags: frozenset[str] | None = None, machine: str | None = None) -> str:
    """Chooses the oneDNN setting for this CPU, unless the user chose one; returns what holds.

    Args:
      environ: the environment to read and update (the process's own by default).
      flags: the CPU's feature flags (read from the machine by default).
      machine: the processor architecture, e.g. 'x86_64' (`platform.machine()` by default).

    Returns:
      A one-line description of the oneDNN setting in force, for logs and summaries.
    """
    chosen = {name: environ[name] for name in ONEDNN_VARIABLES if name in environ}
    if chosen:
        return "user: " + ", ".join(f"{k}={v}" for k, v in chosen.items())
    machine = (platform.machine() if machine is None else machine).lower()
    if machine not in ("x86_64", "amd64", "i686", "x86"):
        return f"TensorFlow's default ({machine or 'unknown'} CPU)"
    environ["TF_ENABLE_ONEDNN_OPTS"] = "0"
    if "avx512f" in (cpu_flags() if flags is None else flags):
        return "TF_ENABLE_ONEDNN_OPTS=0 (AVX-512 CPU: oneDNN's AVX-512 convolutions can crash)"
    return "TF_ENABLE_ONEDNN_OPTS=0 (x86 CPU: oneDNN's strided 1x1 convolution gradients are wrong)"

