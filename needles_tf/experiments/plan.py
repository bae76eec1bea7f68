"""Where a sweep's datasets, runs and logs live, the commands that make them, and their state.

    <root>/data/<dataset>/                 datasets, generated once, shared by the runs
    <root>/runs/<experiment>/<dataset>/<settings>,seed=<seed>/   needles-train model dirs
    <root>/sweep/<experiment>/<same>.log   each run's output (all attempts, appended)
    <root>/sweep/<experiment>/<same>.exit.json   the last attempt's exit status and error line

A run is done when its summary.json says finished, interrupted when it has committed epochs
(needles-train resumes it), failed when its last attempt exited with an error, else pending.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from typing import Any

from needles_tf import atomic, run_dir
from needles_tf.experiments.definition import GENERATORS, DatasetSpec, Experiment, Run, flag_args

DONE, INTERRUPTED, FAILED, PENDING = "done", "interrupted", "failed", "pending"
# exit statuses of a stopped, not a failed, attempt: Ctrl-C (130), SIGINT, SIGTERM and USR2
# (SLURM's preemption and time-limit signals)
STOPPED = (130, -signal.SIGINT, -signal.SIGTERM, -signal.SIGUSR2)


class Plan:
    """The paths and commands of one experiment's sweep under `root`.

    Args:
        experiment: the loaded definition.
        root: the study's directory.
        data_flags: generator flags replacing the definitions', per generator (e.g.
            {"nmnist": {"mnist": "idx:/data/mnist"}, "ncamelyon": {"slide_dir": ...}}).
    """

    def __init__(self, experiment: Experiment, root: str,
                 data_flags: dict[str, dict[str, Any]] | None = None):
        self.experiment, self.root = experiment, os.path.abspath(root)
        self.data_flags = data_flags or {}

    def data_dir(self, dataset: str) -> str:
        return os.path.join(self.root, "data", dataset)

    def model_dir(self, run: Run) -> str:
        return os.path.join(self.root, "runs", run.name)

    def log_path(self, run: Run) -> str:
        return os.path.join(self.root, "sweep", run.name + ".log")

    def exit_path(self, run: Run) -> str:
        return os.path.join(self.root, "sweep", run.name + ".exit.json")

    def dataset_command(self, spec: DatasetSpec) -> list[str]:
        """The generator's command line (python -m needles_tf.bin.<generator>)."""
        flags = dict(spec.flags)
        flags.update(self.data_flags.get(spec.generator, {}))
        args = [f"--flagfile={spec.flagfile}"] if spec.flagfile else []
        args += flag_args(sorted(flags.items()))
        return [sys.executable, "-m", f"needles_tf.bin.{GENERATORS[spec.generator]}", *args,
                f"--output_dir={self.data_dir(spec.name)}", "--noprogress"]

    def train_command(self, run: Run) -> list[str]:
        """needles-train's command line for a run (the same command resumes it)."""
        exp = self.experiment
        args = [f"--flagfile={exp.train_flagfile}"] if exp.train_flagfile else []
        args += flag_args([*exp.train, *run.settings, ("seed", run.seed)])
        if run.dataset is not None:
            args.append(f"--data_dir={self.data_dir(run.dataset)}")
        return [sys.executable, "-m", "needles_tf.bin.train", *args,
                f"--model_dir={self.model_dir(run)}", "--verbose=2"]

    def dataset_ready(self, dataset: str) -> bool:
        return os.path.isfile(os.path.join(self.data_dir(dataset), "dataset.json"))

    def state(self, run: Run) -> str:
        """DONE, INTERRUPTED, FAILED or PENDING (see the module docstring)."""
        model_dir = self.model_dir(run)
        summary = os.path.join(model_dir, run_dir.SUMMARY)
        if os.path.isfile(summary):
            try:
                if run_dir.read_summary(model_dir).get("status") == "finished":
                    return DONE
            except run_dir.RunDirError:
                pass
        last = read_exit(self.exit_path(run))
        if last and last["returncode"] != 0 and last["returncode"] not in STOPPED:
            return FAILED
        return INTERRUPTED if run_dir.committed_epochs(model_dir) else PENDING

    def failure(self, run: Run) -> str:
        """The last attempt's error line ('' when it did not fail)."""
        last = read_exit(self.exit_path(run))
        return last["error"] if last else ""


def read_exit(path: str) -> dict[str, Any] | None:
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def error_line(log_path: str) -> str:
    """The line that says why a run failed: our binaries' 'error:' line, else the log's last
    non-empty line (a traceback's exception)."""
    try:
        with open(log_path, errors="replace") as f:
            lines = [line.strip() for line in f.readlines()[-200:] if line.strip()]
    except OSError:
        return ""
    errors = [line for line in lines if ": error: " in line]
    return (errors or lines or [""])[-1][:300]


def record_exit(exit_path: str, log_path: str, returncode: int) -> None:
    """Writes the attempt's exit status (atomically) where the sweep's state reads it."""
    if returncode == 0 or returncode in STOPPED:
        error = ""
    elif returncode < 0:
        error = f"killed by {signal.Signals(-returncode).name} (out of memory?)"
    else:
        error = error_line(log_path)
    atomic.write_json(exit_path, {"returncode": returncode, "error": error})
