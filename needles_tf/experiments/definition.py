"""Experiment definitions (flags/experiments/*.toml) and their expansion into runs.

A definition names its datasets (generator and flags), the needles-train flags every run shares,
a grid (every combination of the listed values, or a union of several grids) and the seeds:

    description = "Fig. 4: test accuracy against the O2I ratio"
    figures = ["4"]
    seeds = [0, 1, 2, 3, 4, 5]
    datasets_file = "datasets.toml"      # shared [datasets] tables, relative to this file

    [train]                              # needles-train flags of every run
    flagfile = "../train/paper.cfg"      # relative to this file
    receptive_field = 33

    [grid]                               # or [[grid]] tables: their union
    dataset = ["nmnist_64", "nmnist_128"]
    pooling = ["max", "mean"]

A grid key is a needles-train flag, or `dataset` (a name under [datasets]), or `noise` (Gaussian
noise, needles-train --noise). Each grid point and seed is one run directory, named by the
settings that differ from the train flagfile's: <root>/runs/<dataset>/<key>=<value>,...,seed=<s>.
So experiments that share a run (the O2I experiment's max-pooling runs are the pooling
experiment's) share its directory under one root, and train it once.
"""

from __future__ import annotations

import dataclasses
import difflib
import glob
import itertools
import os
from typing import Any, Sequence

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

GENERATORS = {"nmnist": "make_nmnist", "ncamelyon": "make_ncamelyon"}
# needles-train's flags a definition may set (tests/test_sweep.py checks them against the binary)
TRAIN_FLAGS = frozenset({
    "batch_size", "blocks", "cache", "class_balance", "data_dir", "deterministic", "epochs",
    "init_from", "jit_compile", "k3", "learning_rate", "log_images", "lr_decay",
    "lr_milestones", "micro_batch_size", "model_dir", "noise", "normalization", "optimizer",
    "overwrite", "pooling", "precision", "receptive_field", "reference_size", "remat",
    "score_detection", "seed",
    "stop_after_fit", "strategy", "tile_size", "train_size", "verbose", "width_scale"})
_SPECIAL = ("dataset", "noise")


class DefinitionError(ValueError):
    """A definition that cannot be used; the message names the file and the problem."""


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
    """A dataset a definition needs: made once by `generator` with `flags` (in <root>/data)."""

    name: str
    generator: str
    flags: tuple[tuple[str, Any], ...]
    flagfile: str | None = None


@dataclasses.dataclass(frozen=True)
class Run:
    """One training run: a grid point and a seed."""

    experiment: str
    dataset: str | None  # a DatasetSpec name; None for noise runs
    settings: tuple[tuple[str, Any], ...]  # the grid point's values (no dataset, no seed)
    seed: int
    name: str  # relative run directory: <dataset>/<settings>,seed=<seed>


@dataclasses.dataclass(frozen=True)
class Experiment:
    name: str
    path: str
    description: str
    figures: tuple[str, ...]
    seeds: tuple[int, ...]
    datasets: dict[str, DatasetSpec]
    train_flagfile: str | None
    train: tuple[tuple[str, Any], ...]
    grids: tuple[dict[str, list], ...]
    verdict: dict[str, Any] = dataclasses.field(default_factory=dict)  # experiments/verdicts.py


def load_experiment(path: str) -> Experiment:
    """Reads and checks a definition.

    Raises:
        DefinitionError: unreadable TOML, unknown keys, or grid values naming no dataset.
    """
    table = _read_toml(path)
    here = os.path.dirname(os.path.abspath(path))
    known = {"description", "figures", "seeds", "datasets_file", "datasets", "train", "grid",
             "verdict"}
    if unknown := sorted(set(table) - known):
        raise DefinitionError(f"{path}: unknown keys {unknown}; expected some of {sorted(known)}")
    datasets_table = {}
    if "datasets_file" in table:
        shared = os.path.join(here, table["datasets_file"])
        datasets_table.update(_read_toml(shared).get("datasets", {}))
    datasets_table.update(table.get("datasets", {}))
    datasets = {name: _dataset(path, here, name, spec) for name, spec in datasets_table.items()}
    train = dict(table.get("train", {}))
    flagfile = train.pop("flagfile", None)
    _check_flags(path, "[train]", train)
    grids = table.get("grid", [{}])
    grids = [grids] if isinstance(grids, dict) else grids
    grids = tuple({key: values if isinstance(values, list) else [values]
                   for key, values in grid.items()} for grid in grids)
    for grid in grids:
        for name in grid.get("dataset", []):
            if name not in datasets:
                raise DefinitionError(f"{path}: grid dataset {name!r} is not defined under "
                                      f"[datasets] (defined: {sorted(datasets)})")
        if ("dataset" in grid) == ("noise" in grid):
            raise DefinitionError(f"{path}: every grid needs a list of `dataset` names or of "
                                  "`noise` sizes (SIZE:COUNT), not both")
        _check_flags(path, "[grid]", {k: v for k, v in grid.items() if k != "dataset"})
        for key, values in grid.items():
            if not values:
                raise DefinitionError(f"{path}: grid {key!r} has no values")
    changes = table.get("verdict", {}).get("changes", [])
    if not isinstance(changes, list) or not all(isinstance(c, str) for c in changes):
        raise DefinitionError(f"{path}: [verdict] changes must be a list of strings (one per "
                              f"change made after the study began), got {changes!r}")
    seeds = table.get("seeds", [0])
    if not seeds or not all(isinstance(s, int) and s >= 0 for s in seeds):
        raise DefinitionError(f"{path}: seeds must be a list of integers >= 0, got {seeds!r}")
    return Experiment(
        name=os.path.splitext(os.path.basename(path))[0], path=os.path.abspath(path),
        description=table.get("description", ""),
        figures=tuple(str(f) for f in table.get("figures", [])), seeds=tuple(seeds),
        datasets=datasets, train_flagfile=flagfile and os.path.join(here, flagfile),
        train=tuple(sorted(train.items())), grids=grids, verdict=dict(table.get("verdict", {})))


def load_members(path: str) -> list[Experiment]:
    """The definitions of a study directory: its *.toml files that have a grid (a datasets
    file has none); or the one definition `path` names.

    Raises:
        DefinitionError: a definition that cannot be used, or a directory without one.
    """
    if not os.path.isdir(path):
        return [load_experiment(path)]
    members = [load_experiment(p) for p in sorted(glob.glob(os.path.join(path, "*.toml")))
               if "grid" in _read_toml(p)]
    if not members:
        raise DefinitionError(f"{path}: no experiment definition (a .toml file with a grid) here")
    return members


def load_study(path: str, seeds: Sequence[int] | None = None) -> tuple[Experiment, list[Run]]:
    """A definition, or a directory of them (a study: the union of their runs, each run that
    several share trained once); returns (the experiment the runs share, the runs). `seeds`
    replace every definition's own.

    The definitions of a study must agree on the needles-train flags (flagfile and [train]) and
    on any dataset two of them name, so that a run they share is one command.

    Raises:
        DefinitionError: a definition that cannot be used, or two that disagree.
    """
    members = [dataclasses.replace(m, seeds=tuple(seeds)) if seeds else m
               for m in load_members(path)]
    first, datasets, runs = members[0], {}, {}
    for member in members:
        if (member.train_flagfile, member.train) != (first.train_flagfile, first.train):
            raise DefinitionError(f"{member.path}: its needles-train flags (flagfile, [train]) "
                                  f"differ from {first.path}'s; a study's definitions share them")
        for name, spec in member.datasets.items():
            if datasets.setdefault(name, spec) != spec:
                raise DefinitionError(f"{member.path}: dataset {name!r} differs from the one "
                                      "another definition of the study gives that name")
        runs.update((run.name, run) for run in expand(member))
    if len(members) == 1:
        return first, list(runs.values())
    # seed by seed: a study stopped part-way has the first seeds of every cell
    ordered = sorted(runs.values(), key=lambda run: run.seed)
    study = dataclasses.replace(
        first, name=os.path.basename(os.path.normpath(path)), path=os.path.abspath(path),
        description="the union of " + ", ".join(m.name for m in members),
        figures=tuple(dict.fromkeys(f for m in members for f in m.figures)),
        seeds=tuple(sorted({s for m in members for s in m.seeds})), datasets=datasets,
        grids=tuple(g for m in members for g in m.grids), verdict={})
    return study, ordered


def _check_flags(path: str, where: str, flags: dict[str, Any]) -> None:
    """Names must be needles-train flags (a typo fails here, not in every run)."""
    for name in flags:
        if name not in TRAIN_FLAGS:
            close = difflib.get_close_matches(name, TRAIN_FLAGS, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise DefinitionError(f"{path}: {where} {name!r} is not a needles-train flag{hint}")
    if where == "[train]" and {"seed", "model_dir", "data_dir"} & set(flags):
        raise DefinitionError(f"{path}: [train] must not set seed, model_dir or data_dir: the "
                              "sweep sets them per run (seeds = [...], datasets)")


def _read_toml(path: str) -> dict[str, Any]:
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise DefinitionError(f"{path}: no such experiment definition") from None
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise DefinitionError(f"{path}: cannot be read as TOML ({e})") from None


def _dataset(path: str, here: str, name: str, spec: dict[str, Any]) -> DatasetSpec:
    spec = dict(spec)
    generator = spec.pop("generator", None)
    if generator not in GENERATORS:
        raise DefinitionError(f"{path}: dataset {name!r} needs generator = one of "
                              f"{sorted(GENERATORS)}, got {generator!r}")
    flagfile = spec.pop("flagfile", None)
    return DatasetSpec(name, generator, tuple(sorted(spec.items())),
                       flagfile and os.path.join(here, flagfile))


def expand(experiment: Experiment) -> list[Run]:
    """Every run of the definition: each grid's combinations x seeds, without repeats."""
    runs: dict[str, Run] = {}
    # names say what differs from the train flagfile (else from the definition's [train])
    base = (read_flagfile(experiment.train_flagfile) if experiment.train_flagfile else
            {k: _text(v).replace("-", ",") for k, v in experiment.train})
    for grid in experiment.grids:
        keys = sorted(grid, key=lambda k: (k not in _SPECIAL, k))
        for values in itertools.product(*(grid[k] for k in keys)):
            point = dict(zip(keys, values))
            dataset = point.pop("dataset", None)
            settings = tuple(sorted(point.items()))  # with noise, for noise runs
            where = dataset or "noise_" + str(point["noise"]).replace(":", "_")
            named = {**dict(experiment.train), **point}
            parts = [f"{k}={_text(v)}" for k, v in sorted(named.items())
                     if k != "noise" and not _same(base.get(k), v)]
            for seed in experiment.seeds:
                name = os.path.join(where, ",".join([*parts, f"seed={seed}"]))
                runs[name] = Run(experiment.name, dataset, settings, seed, name)
    return list(runs.values())


def read_flagfile(path: str) -> dict[str, str]:
    """name -> value text of an absl flagfile's --name=value lines (--name gives "true",
    --noname "false"; nested --flagfile= lines are read too)."""
    flags: dict[str, str] = {}
    with open(path) as f:
        for line in f:
            line = line.strip()
            if line.startswith("--flagfile="):
                flags.update(read_flagfile(os.path.join(os.path.dirname(path), line[11:])))
            elif line.startswith("--") and "=" in line:
                name, _, value = line[2:].partition("=")
                flags[name] = value
            elif line.startswith("--"):  # --name, or --noname (also read as name "noname")
                flags[line[2:]] = "true"
                if line.startswith("--no"):
                    flags[line[4:]] = "false"
    return flags


def _same(text: str | None, value: Any) -> bool:
    """Whether a flagfile's value text means `value`."""
    if text is None:
        return False
    try:
        return float(text) == float(value)
    except (TypeError, ValueError):
        return text == _text(value).replace("-", ",")


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, list):
        return "-".join(_text(v) for v in value)
    return str(value)


def flag_args(settings: tuple[tuple[str, Any], ...] | list[tuple[str, Any]]) -> list[str]:
    """Command-line flags for (name, value) pairs: --name=value, --name / --noname for
    booleans, comma-joined lists."""
    args = []
    for key, value in settings:
        if isinstance(value, bool):
            args.append(f"--{key}" if value else f"--no{key}")
        elif isinstance(value, list):
            args.append(f"--{key}={','.join(str(v) for v in value)}")
        else:
            args.append(f"--{key}={value}")
    return args
