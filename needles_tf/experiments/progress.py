"""A sweep's progress line: runs done / running / failed / left, and why failures failed."""

from __future__ import annotations

from typing import Callable, Sequence

from needles_tf.experiments.definition import Run
from needles_tf.experiments.plan import DONE, FAILED, Plan


class Progress:
    """Tracks the runs of a sweep from their files (plan.state) and what is running now."""

    def __init__(self, plan: Plan, runs: Sequence[Run], say: Callable[[str], None] = print):
        self.plan, self.runs, self.say = plan, list(runs), say
        self.states = {run.name: plan.state(run) for run in runs}
        self.running: set[str] = set()
        self._last = ""
        self._said_failed: set[str] = set()  # failures said since their last start

    def started(self, run: Run) -> None:
        self.running.add(run.name)
        self._said_failed.discard(run.name)
        self.show()

    def finished(self, run: Run) -> None:
        self.running.discard(run.name)
        self.states[run.name] = self.plan.state(run)
        if self.states[run.name] == FAILED and run.name not in self._said_failed:
            self.say(f"  failed: {run.name}: {self.plan.failure(run)}")
            self._said_failed.add(run.name)
        self.show()

    def counts(self) -> dict[str, int]:
        done = sum(state == DONE for state in self.states.values())
        failed = sum(state == FAILED and name not in self.running
                     for name, state in self.states.items())
        running = len(self.running)
        return {"done": done, "running": running, "failed": failed,
                "left": len(self.runs) - done - running - failed}

    def line(self) -> str:
        c = self.counts()
        return (f"{self.plan.experiment.name}: {c['done']} done, {c['running']} running, "
                f"{c['failed']} failed, {c['left']} left (of {len(self.runs)})")

    def show(self) -> None:
        """Says the progress line when it changed."""
        line = self.line()
        if line != self._last:
            self.say(line)
            self._last = line

    def failures(self) -> list[str]:
        return [f"{run.name}: {self.plan.failure(run)}" for run in self.runs
                if self.states[run.name] == FAILED and run.name not in self.running]
