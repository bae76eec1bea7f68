"""Cells of a study for its verdicts: a configuration at one O2I ratio, summarised over seeds,
and the conventions every verdict rule shares (experiments/verdicts.py).

- rows: the runs of one kind (nMNIST, or noise for memorisation), every setting a claim does
  not vary held at one value as the figures hold it (results.hold_fixed: the paper's value
  where present, else the most common);
- a cell: the mean and standard deviation of a metric over its seeds (sd 0 for one seed);
- a difference counts only beyond the seeds' spread: a exceeds b when
  mean_a - mean_b > sd_a + sd_b (their mean +- sd intervals do not overlap); a difference of
  two differences must exceed the four spreads added;
- informative O2I: where some cell's mean test accuracy reaches `informative` (default 0.6);
  below, every setting is near chance and there is nothing to compare;
- cut off while improving: a run stopped at its epoch cap, not fit, whose best validation epoch
  was its last (a noise run: stopped at the cap, not fit); for a claim about fitting (C6), also
  one whose training accuracy rose in its last epoch; no verdict rests on a cell compared where
  most seeds were (decide).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd

from needles_tf.experiments.results import SETTINGS, hold_fixed

REPRODUCED, NOT_REPRODUCED, INCONCLUSIVE = "reproduced", "not reproduced", "inconclusive"
Check = tuple[str, bool]  # what was checked (with its numbers), whether it holds
CUT_OFF = "cut off improving"  # view's column: seeds stopped at the cap while still improving


@dataclasses.dataclass(frozen=True)
class Cell:
    """A metric over the seeds of one configuration: mean, standard deviation, seeds, how many
    of them fit their training set and how many were cut off while improving."""

    mean: float
    sd: float
    n: int
    fitted: int = 0
    cut_off: int = 0

    def exceeds(self, other: Cell) -> bool:
        """Whether this cell's mean is above the other's by more than their spreads."""
        return self.mean - other.mean > self.sd + other.sd

    def text(self) -> str:
        return f"{self.mean:.3f} ± {self.sd:.3f}"


def held_rows(results: pd.DataFrame, varied: tuple[str, ...], kind: str = "nmnist"
              ) -> pd.DataFrame:
    """The runs of `kind` that a claim about the `varied` settings reads."""
    return hold_fixed(results[results["kind"] == kind], varied)


def cells(rows: pd.DataFrame, keys: list[str], metric: str, fitting: bool = False
          ) -> dict[tuple, Cell]:
    """(values of `keys`) -> Cell of `metric` over each group's runs (its seeds); `fitting`:
    count cut-off runs as a claim about fitting does (cut_off)."""
    out = {}
    for values, group in rows.dropna(subset=[metric]).groupby(keys, sort=False):
        values = values if isinstance(values, tuple) else (values,)
        series = group[metric].astype(float)
        out[values] = Cell(float(series.mean()),
                           float(series.std()) if len(series) > 1 else 0.0, len(series),
                           int(group["fits"].astype(bool).sum()),
                           int(cut_off(group, fitting).sum()))
    return out


def cut_off(rows: pd.DataFrame, fitting: bool = False) -> pd.Series:
    """Runs still improving when stopped: at their epoch cap without fitting, with their best
    validation epoch their last; or any noise run stopped so (random labels: its validation
    accuracy says nothing, and memorising only goes up). With `fitting` (a claim about fitting
    the training set), also a run whose training accuracy rose in its last epoch by more than
    its sampling noise (the binomial standard error of an accuracy over the training set): its
    validation accuracy may have settled while fitting had not. A table from before
    last_train_gain reads as no rise."""
    capped = (rows["stop_reason"] == "cap") & ~rows["fits"].astype(bool)
    improving = (rows["best_epoch"] >= rows["stopped_epoch"]) | (rows["kind"] == "noise")
    if fitting and "last_train_gain" in rows:
        accuracy = rows["final_train_accuracy"].astype(float)
        noise = np.sqrt(accuracy * (1 - accuracy) / rows["train_size"].astype(float))
        improving |= rows["last_train_gain"].astype(float) > noise
    return capped & improving


def view(table: dict[tuple, Cell], keys: list[str], metric: str) -> pd.DataFrame:
    """The cells as a table for findings.md: keys, metric (mean ± sd), seeds, seeds that fit,
    seeds cut off while improving; largest O2I first."""
    items = list(table.items())
    if "o2i" in keys:
        items.sort(key=lambda kc: -kc[0][keys.index("o2i")])
    return pd.DataFrame([{**{key: percent(v) if key == "o2i" else v for key, v in zip(keys, k)},
                          metric: c.text(),
                          "seeds": c.n, "fit": f"{c.fitted}/{c.n}", CUT_OFF: c.cut_off}
                         for k, c in items],
                        columns=[*keys, metric, "seeds", "fit", CUT_OFF])


def enough_seeds(table: dict[tuple, Cell], p: dict) -> bool:
    """Whether every cell has the rule's `min_seeds` (default 3)."""
    return bool(table) and min(c.n for c in table.values()) >= p.get("min_seeds", 3)


def informative_o2i(rows: pd.DataFrame, p: dict) -> list[float]:
    """O2I ratios (largest first) where some configuration's mean test accuracy reaches the
    rule's `informative` level (default 0.6)."""
    keys = ["o2i", *SETTINGS]
    means = rows.astype({k: str for k in SETTINGS}).groupby(keys, dropna=False)[
        "test_accuracy"].mean()
    best = means.groupby(level="o2i").max()
    return sorted((float(o) for o, m in best.items() if m >= p.get("informative", 0.6)),
                  reverse=True)


def percent(o2i: float) -> str:
    """An O2I ratio as findings.md writes it (three significant digits)."""
    return f"{o2i:.3g} %"


def listed(o2is: list[float]) -> str:
    return ", ".join(percent(o) for o in o2is) or "none"


def decide(checks: list[Check], contradicted: bool, read: dict[tuple, Cell]) -> str:
    """The outcome of a rule's checks, after appending to `checks` that no cell in `read`
    (the cells the rule compared) has most of its seeds cut off while improving.

    Inconclusive where one has (no verdict rests on such runs, either way); else not
    reproduced where a part is contradicted; reproduced where every check holds; inconclusive
    otherwise.
    """
    cut = [_label(key) for key, cell in read.items() if 2 * cell.cut_off > cell.n]
    checks.append(("no cell compared has most seeds cut off at the cap while improving "
                   f"(such cells: {', '.join(cut) or 'none'})", not cut))
    if cut:
        return INCONCLUSIVE
    if contradicted:
        return NOT_REPRODUCED
    return REPRODUCED if all(ok for _, ok in checks) else INCONCLUSIVE


def _label(key: tuple) -> str:
    """A cell's key (its O2I first) in a check's text."""
    return " ".join(percent(v) if i == 0 and isinstance(v, float) else str(v)
                    for i, v in enumerate(key))
