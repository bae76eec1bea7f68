"""The local executor: a sweep's runs, N at a time, on this machine.

With GPUs each run sees one (CUDA_VISIBLE_DEVICES, round robin over the slots); without, the
CPU cores are shared out (TF_NUM_INTRAOP_THREADS) so N runs do not each take every core.
Ctrl-C stops the running runs after their current batch: they keep their finished epochs and
the same command resumes them.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from typing import Callable, Sequence

from needles_tf.experiments import runner
from needles_tf.experiments.definition import Run
from needles_tf.experiments.plan import Plan
from needles_tf.experiments.progress import Progress


def visible_gpus() -> list[str]:
    """The GPUs runs may use: CUDA_VISIBLE_DEVICES when set, else those nvidia-smi lists."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return [g for g in visible.split(",") if g.strip() and g.strip() != "-1"]
    if not shutil.which("nvidia-smi"):
        return []
    try:
        listing = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True,
                                 timeout=30, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [str(i) for i, line in enumerate(listing.splitlines()) if line.startswith("GPU")]


def slot_env(slot: int, parallel: int, gpus: Sequence[str]) -> dict[str, str]:
    """The environment of a run in pool slot `slot`: its GPU, or its share of the cores."""
    env = dict(os.environ)
    if gpus:
        env["CUDA_VISIBLE_DEVICES"] = gpus[slot % len(gpus)]
    else:
        threads = str(max(1, (os.cpu_count() or 1) // parallel))
        env.update(TF_NUM_INTRAOP_THREADS=threads, OMP_NUM_THREADS=threads)
    return env


def run_local(plan: Plan, runs: Sequence[Run], parallel: int, gpus: Sequence[str],
              say: Callable[[str], None] = print, poll_seconds: float = 1.0) -> Progress:
    """Runs `runs` (those not done) `parallel` at a time; returns the final progress.

    Raises:
        KeyboardInterrupt: after the running runs have stopped and been recorded.
    """
    progress = Progress(plan, runs, say)
    queue = [run for run in runs if progress.states[run.name] != "done"]
    running: dict[subprocess.Popen, tuple[Run, int]] = {}
    free = list(range(parallel))
    progress.show()
    try:
        while queue or running:
            while queue and free:
                run, slot = queue.pop(0), free.pop(0)
                process = runner.start(plan.train_command(run), plan.log_path(run),
                                       slot_env(slot, parallel, gpus))
                running[process] = (run, slot)
                progress.started(run)
            time.sleep(poll_seconds)
            for process in [p for p in running if p.poll() is not None]:
                run, slot = running.pop(process)
                runner.finish(process, plan.log_path(run), plan.exit_path(run))
                free.append(slot)
                progress.finished(run)
    except KeyboardInterrupt:
        for process in running:  # not all of them share our terminal's process group
            runner.interrupt(process)
        for process, (run, _) in running.items():
            runner.finish(process, plan.log_path(run), plan.exit_path(run), stopped=True)
        raise
    return progress
