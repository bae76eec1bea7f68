"""One attempt at a run (or a dataset): its command, output appended to a log, exit recorded.

The local pool and the SLURM jobs run commands the same way, so a run's log and exit status
look alike wherever it ran.
"""

from __future__ import annotations

import os
import shlex
import signal
import socket
import subprocess
import time

from needles_tf.experiments.plan import record_exit


def _ignore_usr2() -> None:
    # USR2 is SLURM's notice of a time limit or preemption, for submitit (in the job's Python),
    # which requeues the job; by default it would end the run at once, recorded as a failure.
    # Ignored, training goes on until SLURM stops the job for the requeue.
    signal.signal(signal.SIGUSR2, signal.SIG_IGN)


def start(command: list[str], log_path: str, env: dict[str, str] | None = None,
          ignore_usr2: bool = False) -> subprocess.Popen:
    """Starts `command` with stdout and stderr appended to `log_path` (a header per attempt);
    `ignore_usr2` in SLURM jobs."""
    os.makedirs(os.path.dirname(log_path), exist_ok=True)
    with open(log_path, "ab") as log:
        stamp = time.strftime("%Y-%m-%d %H:%M:%S")
        log.write(f"\n=== {stamp} on {socket.gethostname()}: {shlex.join(command)}\n".encode())
        log.flush()
        return subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, env=env,
                                preexec_fn=_ignore_usr2 if ignore_usr2 else None)


def interrupt(process: subprocess.Popen) -> None:
    """Asks a started command to stop (a run keeps its finished epochs): SIGINT, as Ctrl-C;
    SIGTERM where we ignore SIGINT (a sweep started in the background of a script), since our
    commands inherit that and would not stop."""
    ignored = signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    process.send_signal(signal.SIGTERM if ignored else signal.SIGINT)


def finish(process: subprocess.Popen, log_path: str, exit_path: str,
           stopped: bool = False) -> int:
    """Waits for `process` and records its exit status and error line; returns the status.

    stopped: we interrupted it; whatever status it ends with (a Python interrupted while it
    starts exits 1, "Fatal Python error"), it is recorded as stopped (130), not failed.
    """
    returncode = process.wait()
    if stopped and returncode:
        returncode = 130
    record_exit(exit_path, log_path, returncode)
    return returncode


def run(command: list[str], log_path: str, exit_path: str,
        env: dict[str, str] | None = None) -> int:
    """start() then finish(): one attempt, to the end. Interrupted (Ctrl-C, or a SIGTERM made
    KeyboardInterrupt), it passes the interrupt on to the command and waits for it to stop."""
    process = start(command, log_path, env)
    try:
        return finish(process, log_path, exit_path)
    except KeyboardInterrupt:
        interrupt(process)
        finish(process, log_path, exit_path, stopped=True)
        raise
