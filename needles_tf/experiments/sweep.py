"""A sweep: an experiment's runs, their datasets made first, run by the local pool or SLURM."""

from __future__ import annotations

import contextlib
import dataclasses
import fnmatch
import os
from typing import Any, Callable, Iterator, Sequence

from needles_tf import dir_lock
from needles_tf.experiments import cost, runner
from needles_tf.experiments.definition import DefinitionError, Run, load_study
from needles_tf.experiments.local import run_local, visible_gpus
from needles_tf.experiments.plan import DONE, Plan, error_line
from needles_tf.experiments.progress import Progress


class SweepError(RuntimeError):
    """A sweep that cannot go on; the message says why and what to do."""


@dataclasses.dataclass(frozen=True)
class SlurmSettings:
    partition: str | None = None
    minutes: int = 24 * 60
    gpus: int = 1
    cpus: int = 8
    mem_gb: int | None = None
    max_concurrent: int = 32


@contextlib.contextmanager
def holding_root(plan: Plan) -> Iterator[None]:
    """One sweep at a time under a root: two would generate the same datasets and start the
    same runs at once.

    Raises:
        SweepError: another live process holds the root.
    """
    directory = os.path.join(plan.root, "sweep")
    try:
        os.makedirs(directory, exist_ok=True)
    except OSError as e:
        raise SweepError(f"cannot write in --root {plan.root}: {e.strerror}") from None
    try:
        with dir_lock.exclusive(directory):
            yield
    except dir_lock.DirectoryBusy as e:
        raise SweepError(f"another needles-sweep is running on {plan.root} ({e}); "
                         "needles-sweep --dry_run shows its progress") from None


def prepare(definition: str, root: str, data_flags: dict[str, dict[str, Any]] | None = None,
            seeds: Sequence[int] | None = None, only: Sequence[str] | None = None
            ) -> tuple[Plan, list[Run]]:
    """The plan and runs of a definition, or of a directory of them (their union), with
    `seeds` instead of their own when given, and only the runs whose names match one of the
    shell patterns `only` (e.g. 'nm14_32/seed=*': one cell) when given.

    Raises:
        DefinitionError: the definition cannot be used, or `only` matches no run.
    """
    experiment, runs = load_study(definition, seeds)
    if only:
        chosen = [run for run in runs if any(fnmatch.fnmatchcase(run.name, p) for p in only)]
        if not chosen:
            raise DefinitionError(
                f"--only={','.join(only)} matches none of the {len(runs)} runs of "
                f"{experiment.name} (names like {', '.join(r.name for r in runs[:3])})")
        runs = chosen
    return Plan(experiment, root, data_flags), runs


def dry_run_text(plan: Plan, runs: list[Run], images_per_second: float | None = None) -> str:
    """What a sweep would do: each run's state, the datasets to make, the cost of the runs
    not done (cost.estimate)."""
    lines = [f"{plan.experiment.name}: {plan.experiment.description}".rstrip(": ")]
    needed = sorted({run.dataset for run in runs if run.dataset})
    for name in needed:
        ready = "ready" if plan.dataset_ready(name) else "to generate"
        lines.append(f"  dataset {name}: {ready} ({plan.data_dir(name)})")
    states = {run.name: plan.state(run) for run in runs}
    for run in runs:
        failure = plan.failure(run) if states[run.name] == "failed" else ""
        lines.append(f"  {states[run.name]:<11} {run.name}" + (f"  ({failure})" if failure
                                                                 else ""))
    todo = [run for run in runs if states[run.name] != DONE]
    counts = {s: sum(v == s for v in states.values()) for s in sorted(set(states.values()))}
    lines.append(f"{len(runs)} runs: " + ", ".join(f"{n} {s}" for s, n in counts.items()))
    lines.append(_cost_line(cost.estimate(plan, todo, images_per_second)))
    return "\n".join(lines)


def _cost_line(estimate: dict[str, Any]) -> str:
    text = f"cost of the runs not done: {estimate['images']:,} images to process"
    if estimate["hours"] is not None:
        text += f", about {estimate['hours']:.1f} h at the speed of {estimate['rate_from']}"
    else:
        text += " (no speed known: finish a run, or pass --images_per_second)"
    if estimate["may_stop_early"]:
        text += (f"; an upper bound: {estimate['may_stop_early']} of these runs stop early once "
                 "they fit (--stop_after_fit), counted here at their epoch cap")
    if estimate["unknown"]:
        text += (f"; {estimate['unknown']} run(s) not counted: their dataset is not generated "
                 "yet and cannot be counted beforehand")
    return text


def generate_datasets(plan: Plan, runs: list[Run], strict: bool = False,
                      say: Callable[[str], None] = print) -> list[Run]:
    """Makes each missing dataset the runs need (once); returns the runs whose data is ready.

    Raises:
        SweepError: a generator failed and `strict` is set.
    """
    failed = set()
    for name in sorted({run.dataset for run in runs if run.dataset}):
        if plan.dataset_ready(name):
            continue
        log = os.path.join(plan.root, "sweep", "data", name + ".log")
        say(f"generating dataset {name} -> {plan.data_dir(name)} (log: {log})")
        returncode = runner.run(plan.dataset_command(plan.experiment.datasets[name]), log,
                                log[:-4] + ".exit.json")
        if returncode:
            message = f"dataset {name}: the generator failed ({error_line(log)})"
            if strict:
                raise SweepError(message)
            say(f"  {message}; its runs are skipped")
            failed.add(name)
    return [run for run in runs if run.dataset not in failed]


def run_locally(plan: Plan, runs: list[Run], parallel: int | None = None) -> Progress:
    gpus = visible_gpus()
    return run_local(plan, runs, parallel or max(len(gpus), 1), gpus)


def run_on_slurm(plan: Plan, runs: list[Run], settings: SlurmSettings,
                 wait: bool = True) -> Progress | None:
    from needles_tf.experiments import slurm

    return slurm.run_slurm(plan, runs, settings, wait)
