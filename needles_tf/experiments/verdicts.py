"""Verdicts on the paper's claims from a study's results table (results.csv's rows).

Each claim's definition (e.g. flags/experiments/findings/c1_o2i.toml) fixes its rule before its
runs in a [verdict] table: `claim` (C1 ...), `paper` (the claim), `figure`, `rule` (a name in
RULES) and the rule's numbers. A rule reads only the results table, so the same definitions
judge a miniature study and the paper's full-scale one. Conventions (rows held fixed, cells,
"beyond the spread", informative O2I, cut off while improving): experiments/cells.py. Each rule
returns its outcome, the checks behind it and the cells it read; `decide` adds the check that
no cell compared was cut off while improving.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import pandas as pd

from needles_tf.experiments import fit_verdicts
from needles_tf.experiments.cells import (
    INCONCLUSIVE,
    Cell,
    Check,
    cells,
    decide,
    enough_seeds,
    held_rows,
    informative_o2i,
    listed,
    view,
)
from needles_tf.experiments.results import minimum_train_size

Outcome = tuple[str, list[Check], pd.DataFrame]


@dataclasses.dataclass
class Verdict:
    """A claim's outcome, the checks behind it and the cells it read."""

    claim: str
    outcome: str
    checks: list[Check]
    cells: pd.DataFrame


def _missing(what: str, p: dict, table: pd.DataFrame) -> Outcome:
    return INCONCLUSIVE, [(f"{what}, >= {p.get('min_seeds', 3)} seeds per cell", False)], table


def _falls(table: dict[tuple, Cell], metric: str, p: dict) -> tuple[list[Check], bool]:
    """Along the O2I ladder (keys (o2i,)): the largest O2I's cell exceeds the smallest's, and
    no step to a smaller O2I rises beyond the spread; (checks, contradicted)."""
    ladder = sorted(table, reverse=True)
    top, bottom = table[ladder[0]], table[ladder[-1]]
    rises = [f"{a[0]:.3g} -> {b[0]:.3g} %" for a, b in zip(ladder, ladder[1:])
             if table[b].exceeds(table[a])]
    checks = [(f"{metric} falls beyond the spread from {ladder[0][0]:.3g} % ({top.text()}) to "
               f"{ladder[-1][0]:.3g} % ({bottom.text()})", top.exceeds(bottom)),
              ("no rise beyond the spread towards a smaller O2I (rises: "
               f"{', '.join(rises) or 'none'})", not rises)]
    return checks, bool(rises) or bottom.exceeds(top)


def o2i_limit(results: pd.DataFrame, p: dict) -> Outcome:
    """C1: along a ladder of >= `min_o2i` ratios, mean test accuracy >= `high` at the largest,
    <= `low` at the smallest, falling beyond the spread from the largest to the smallest and
    never rising beyond it from one ratio to the next smaller. Not reproduced where it rises
    so, or where the smallest beats the largest beyond the spread."""
    table = cells(held_rows(results, ()), ["o2i"], "test_accuracy")
    shown = view(table, ["o2i"], "test_accuracy")
    if len(table) < p.get("min_o2i", 4) or not enough_seeds(table, p):
        return _missing(f"a ladder of >= {p.get('min_o2i', 4)} O2I ratios", p, shown)
    ladder = sorted(table, reverse=True)
    top, bottom = table[ladder[0]], table[ladder[-1]]
    checks, contradicted = _falls(table, "test accuracy", p)
    checks = [(f"largest O2I {ladder[0][0]:.3g} %: mean {top.mean:.3f} >= {p['high']}",
               top.mean >= p["high"]),
              (f"smallest O2I {ladder[-1][0]:.3g} %: mean {bottom.mean:.3f} <= {p['low']}",
               bottom.mean <= p["low"]), *checks]
    # accuracy that stays high down the ladder has not met its limit yet: inconclusive
    return decide(checks, contradicted, table), checks, shown


def more_helps(results: pd.DataFrame, p: dict) -> Outcome:
    """C2, C3: at the O2I ratios where both were trained, the largest value of `setting`
    beats the smallest beyond the spread at some O2I and is never worse beyond it; its gain at
    the smallest informative such O2I exceeds its gain at the largest by more than the four
    cells' spread. With `min_size_thresholds` (C2): the smallest training set whose mean
    validation accuracy reaches each threshold never shrinks towards smaller O2I, and is larger
    at the smallest O2I than at the largest for every threshold; this reads every O2I of the
    ladder, those trained at one size too, where 'not reached' counts as more than any size
    trained. Not reproduced where the least beats the most beyond the spread at some O2I,
    where the gain at the largest O2I exceeds the small one's by more than the spread, or
    where a minimum training set shrinks towards smaller O2I."""
    setting = p["setting"]
    rows = held_rows(results, (setting,))
    table = cells(rows, ["o2i", setting], "test_accuracy")
    shown = view(table, ["o2i", setting], "test_accuracy")
    pairs, read = {}, {}
    for o2i in sorted({k[0] for k in table}, reverse=True):
        values = sorted((float(k[1]), k) for k in table if k[0] == o2i)
        if len(values) >= 2:
            pairs[o2i] = (table[values[-1][1]], table[values[0][1]])  # (most, least)
            read.update({k: table[k] for k in (values[-1][1], values[0][1])})
    small = [o for o in informative_o2i(rows, p) if o in pairs]
    if len(pairs) < 2 or not small or not enough_seeds(table, p):
        return _missing(f"two O2I ratios (one informative) with two values of {setting}", p,
                        shown)
    large, small = max(pairs), small[-1]
    helps = [o for o, (most, least) in pairs.items() if most.exceeds(least)]
    hurts = [o for o, (most, least) in pairs.items() if least.exceeds(most)]

    def gain(o2i):
        return pairs[o2i][0].mean - pairs[o2i][1].mean

    spread = sum(c.sd for c in (*pairs[large], *pairs[small]))
    checks = [(f"the most {setting} beats the least beyond the spread at some O2I (at: "
               f"{listed(helps)})", bool(helps)),
              (f"never worse beyond the spread (at: {listed(hurts)})", not hurts),
              (f"gain at {small:.3g} % ({gain(small):+.3f}) exceeds the gain at {large:.3g} % "
               f"({gain(large):+.3f}) by more than the spread {spread:.3f}",
               small != large and gain(small) - gain(large) > spread)]
    contradicted = bool(hurts) or gain(large) - gain(small) > spread
    for threshold in p.get("min_size_thresholds", []):
        sizes = minimum_train_size(rows, threshold)
        o2i_of = rows.groupby("o2i_label")["o2i"].first()
        ordered = [sizes[label] for label in sorted(sizes, key=lambda k: -o2i_of[k])]
        needed = [float("inf") if pd.isna(s) else s for s in ordered]
        shrinks = any(b < a for a, b in zip(needed, needed[1:]))
        checks.append((f"smallest training set reaching {threshold:.0%} validation accuracy, "
                       f"largest to smallest O2I: {', '.join(_size(s) for s in ordered)} "
                       "(never smaller at a smaller O2I, larger at the smallest)",
                       not shrinks and needed[-1] > needed[0]))
        contradicted |= shrinks
    return decide(checks, contradicted, read), checks, shown


def _size(size: float) -> str:
    return "not reached" if pd.isna(size) else f"{size:.0f}"


def beats(results: pd.DataFrame, p: dict) -> Outcome:
    """C4: the best of the `better` values of `setting` beats every `worse` value beyond the
    spread at some informative O2I, and no `worse` value beats it beyond the spread anywhere.
    Not reproduced where a `worse` value beats it so somewhere."""
    setting = p["setting"]
    rows = held_rows(results, (setting,))
    table = cells(rows, ["o2i", setting], "test_accuracy")
    shown = view(table, ["o2i", setting], "test_accuracy")
    better, worse = [str(v) for v in p["better"]], [str(v) for v in p["worse"]]
    informative = informative_o2i(rows, p)
    wins, losses, read = [], [], {}
    for o2i in sorted({k[0] for k in table}, reverse=True):
        here = {str(k[1]): c for k, c in table.items() if k[0] == o2i}
        good, bad = [here[v] for v in better if v in here], [here[v] for v in worse if v in here]
        if not good or not bad:
            continue
        read.update({k: c for k, c in table.items()
                     if k[0] == o2i and str(k[1]) in better + worse})
        best = max(good, key=lambda c: c.mean)
        if o2i in informative and all(best.exceeds(c) for c in bad):
            wins.append(o2i)
        if any(c.exceeds(best) for c in bad):
            losses.append(o2i)
    if not read or not enough_seeds(table, p):
        return _missing(f"{setting} {better} and {worse} at one O2I", p, shown)
    checks = [(f"{setting} {'/'.join(better)} beats {'/'.join(worse)} beyond the spread at an "
               f"informative O2I (at: {listed(wins)})", bool(wins)),
              (f"{'/'.join(worse)} never beats it beyond the spread (at: {listed(losses)})",
               not losses)]
    return decide(checks, bool(losses), read), checks, shown


def _best_at_small(rows: pd.DataFrame, metric: str, p: dict
                   ) -> tuple[list[Check], bool, dict[tuple, Cell], dict[tuple, Cell]]:
    """`best` pooling at the smallest informative O2I: the highest mean, beyond the spread of
    at least one other pooling; contradicted where another beats it beyond the spread.
    Returns (checks, contradicted, every cell, the cells compared)."""
    table = cells(rows, ["o2i", "pooling"], metric)
    best = p.get("best", "max")
    at = [o for o in informative_o2i(rows, p)
          if sum(k[0] == o for k in table) >= 2 and (o, best) in table]
    if not at:
        return [(f"{best} and another pooling at an informative O2I", False)], False, table, {}
    here = {k[1]: c for k, c in table.items() if k[0] == at[-1]}
    mine = here.pop(best)
    beaten = sorted(k for k, c in here.items() if mine.exceeds(c))
    beaters = sorted(k for k, c in here.items() if c.exceeds(mine))
    top = all(mine.mean >= c.mean for c in here.values())
    checks = [(f"at {at[-1]:.3g} % {best} has the highest mean {metric} ({mine.text()}) and "
               f"beats another beyond the spread (beats: {', '.join(beaten) or 'none'})",
               top and bool(beaten)),
              (f"no pooling beats {best} there beyond the spread (beaten by: "
               f"{', '.join(beaters) or 'none'})", not beaters)]
    return checks, bool(beaters), table, {k: c for k, c in table.items() if k[0] == at[-1]}


def pooling(results: pd.DataFrame, p: dict) -> Outcome:
    """C5: at the largest O2I the poolings' mean test accuracies lie within `alike` of each
    other (or no two differ beyond the spread); at the smallest informative O2I `best` (max)
    has the highest mean and beats another pooling beyond the spread. Not reproduced where the
    poolings are not alike at the largest O2I, or where another pooling beats `best` beyond
    the spread at the smallest informative one."""
    rows = held_rows(results, ("pooling",))
    checks, contradicted, table, read = _best_at_small(rows, "test_accuracy", p)
    shown = view(table, ["o2i", "pooling"], "test_accuracy")
    if not enough_seeds(table, p) or not table:
        return _missing("the poolings at two O2I ratios", p, shown)
    large = max(k[0] for k in table)
    here = [c for k, c in table.items() if k[0] == large]
    span = max(c.mean for c in here) - min(c.mean for c in here)
    differ = any(a.exceeds(b) for a in here for b in here)
    alike = span <= p.get("alike", 0.05) or not differ
    checks.insert(0, (f"at {large:.3g} % the {len(here)} poolings are alike: means within "
                      f"{span:.3f} (<= {p.get('alike', 0.05)}) or none differ beyond the spread",
                      alike and len(here) >= 2))
    read.update({k: c for k, c in table.items() if k[0] == large})
    return decide(checks, contradicted or not alike, read), checks, shown


def detection(results: pd.DataFrame, p: dict) -> Outcome:
    """C8: the `metric` (saliency detection AP) of `best` pooling falls along the O2I ladder
    (beyond the spread from the largest to the smallest, never rising beyond it from one ratio
    to the next smaller), and at the smallest informative O2I `best` has the highest mean
    `metric` and beats another pooling beyond the spread. Not reproduced where the metric
    rises so, or where another pooling beats `best` beyond the spread at that O2I."""
    metric, best = p.get("metric", "saliency_ap"), p.get("best", "max")
    checks, contradicted, table, read = _best_at_small(held_rows(results, ("pooling",)),
                                                       metric, p)
    shown = view(table, ["o2i", "pooling"], metric)
    ladder = {(key[0],): c for key, c in table.items() if str(key[1]) == best}  # best's cells
    if len(ladder) < 2 or not enough_seeds(table, p):
        return _missing(f"{metric} of the poolings at two O2I ratios", p, shown)
    falls, rises = _falls(ladder, metric, p)
    checks = [*falls, *checks]
    read.update({key: c for key, c in table.items() if str(key[1]) == best})
    return decide(checks, contradicted or rises, read), checks, shown


RULES: dict[str, Callable[[pd.DataFrame, dict], Outcome]] = {
    "o2i_limit": o2i_limit, "more_helps": more_helps, "beats": beats, "pooling": pooling,
    "detection": detection, **fit_verdicts.RULES}


def judge(results: pd.DataFrame, verdict: dict[str, Any]) -> Verdict:
    """The verdict of one claim (a definition's [verdict] table) on a results table.

    Raises:
        ValueError: the table names no known rule.
    """
    rule = RULES.get(verdict.get("rule", ""))
    if rule is None:
        raise ValueError(f"verdict rule {verdict.get('rule')!r} is unknown; expected one of "
                         f"{sorted(RULES)}")
    outcome, checks, table = rule(results, verdict)
    return Verdict(verdict.get("claim", ""), outcome, checks, table)
