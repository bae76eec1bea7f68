"""The SLURM executor: a sweep's runs as one job array on an existing cluster, via submitit.

Each array task runs one needles-train command (runner.run: the same log and exit record as a
local run). Before a time limit or a preemption SLURM signals the job (submitit asks for
USR2); submitit then requeues it, and the requeued task runs the same command, which resumes
the run from its last finished epoch. `scancel --signal=USR2 JOB_TASK` simulates that.
"""

from __future__ import annotations

import os
import subprocess
import time
from typing import Callable, Sequence

from needles_tf.experiments import runner
from needles_tf.experiments.definition import Run
from needles_tf.experiments.plan import Plan, error_line
from needles_tf.experiments.progress import Progress

try:
    import submitit
except ImportError:  # reported when the executor is asked for
    submitit = None


class TrainJob(submitit.helpers.Checkpointable if submitit else object):
    """One run in a SLURM job; requeued (checkpoint() resubmits the same call) on USR2."""

    def __call__(self, command: list[str], log_path: str, exit_path: str) -> int:
        process = runner.start(command, log_path, ignore_usr2=True)
        returncode = runner.finish(process, log_path, exit_path)
        if returncode:
            raise RuntimeError(f"exit status {returncode}: {error_line(log_path)}")
        return returncode


def run_slurm(plan: Plan, runs: Sequence[Run], settings, wait: bool = True,
              say: Callable[[str], None] = print, poll_seconds: float = 30.0
              ) -> Progress | None:
    """Submits the runs not done as one job array; with `wait`, follows them to the end.

    Raises:
        sweep.SweepError: submitit is not installed, or sbatch failed.
    """
    from needles_tf.experiments.sweep import SweepError

    if submitit is None:
        raise SweepError("--executor=slurm needs the submitit package: pip install submitit")
    progress = Progress(plan, runs, say)
    todo = [run for run in runs if progress.states[run.name] != "done"]
    if not todo:
        progress.show()
        return progress
    folder = os.path.join(plan.root, "sweep", "slurm", "%j")
    # every preemption or time limit requeues the job and the run resumes: no limit on how
    # often (submitit's default gives up after 3)
    executor = submitit.AutoExecutor(folder=folder, cluster="slurm", slurm_max_num_timeout=1000)
    parameters = {"name": f"needles-{plan.experiment.name}", "timeout_min": settings.minutes,
                  "cpus_per_task": settings.cpus, "tasks_per_node": 1, "nodes": 1,
                  "slurm_array_parallelism": settings.max_concurrent}
    if settings.gpus:
        parameters["gpus_per_node"] = settings.gpus
    if settings.partition:
        parameters["slurm_partition"] = settings.partition
    if settings.mem_gb:
        parameters["mem_gb"] = settings.mem_gb
    executor.update_parameters(**parameters)
    try:
        jobs = executor.map_array(TrainJob(), [plan.train_command(run) for run in todo],
                                  [plan.log_path(run) for run in todo],
                                  [plan.exit_path(run) for run in todo])
    except Exception as e:  # submitit raises plain exceptions for sbatch's failures
        raise SweepError(f"sbatch failed: {e}") from None
    array = jobs[0].job_id.split("_")[0]
    say(f"submitted job array {array} ({len(jobs)} runs) to SLURM; logs in "
        f"{os.path.join(plan.root, 'sweep')}; submitit's in {os.path.dirname(folder)}")
    if not wait:
        return None
    running: set[str] = set()
    while True:
        queued = queued_tasks(array)
        if queued is None:  # squeue failed (e.g. the controller restarts): try again later
            time.sleep(poll_seconds)
            continue
        now_running = {run.name for i, run in enumerate(todo) if queued.get(i) == "RUNNING"}
        for run in todo:
            if run.name in now_running and run.name not in running:
                progress.started(run)
            elif run.name in running and run.name not in now_running:
                progress.finished(run)
        running = now_running
        if not queued:
            break
        time.sleep(poll_seconds)
    for run in todo:
        progress.finished(run)
    return progress


def queued_tasks(array: str) -> dict[int, str] | None:
    """{task index: SLURM state} of the array's tasks still queued or running (squeue), or
    None when squeue fails. (submitit reads job states from sacct, which clusters without
    accounting lack; squeue always works.)"""
    try:
        listing = subprocess.run(["squeue", "-h", "-r", "-j", array, "-o", "%K %T"],
                                 capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError):
        return None
    if listing.returncode:
        # a finished array is no longer known to squeue: "Invalid job id specified"
        return {} if "Invalid job id" in listing.stderr else None
    tasks = {}
    for line in listing.stdout.split("\n"):
        index, _, state = line.strip().partition(" ")
        if index.isdigit():
            tasks[int(index)] = state
    return tasks
