"""Verdict rules about fitting and class balance (C6, C7): see experiments/verdicts.py for the
definitions' [verdict] tables and experiments/cells.py for the shared conventions."""

from __future__ import annotations

import pandas as pd

from needles_tf.experiments.cells import (
    CUT_OFF,
    INCONCLUSIVE,
    Cell,
    Check,
    cells,
    decide,
    enough_seeds,
    held_rows,
    view,
)

Outcome = tuple[str, list[Check], pd.DataFrame]


def optimisation(results: pd.DataFrame, p: dict) -> Outcome:
    """C6: the fraction of nMNIST runs that fit (over the poolings present at that O2I) is
    >= `fit_high` at the largest O2I and <= `fit_low` at the smallest; the mean epochs to fit
    at the smallest O2I where runs fit exceed those at the largest where runs fit, beyond the
    spread (or only the largest has runs that fit); every Gaussian-noise run fits. Not
    reproduced where more runs fit at the smallest O2I than at the largest, where the largest
    takes longer to fit beyond the spread, or where a noise cell has no seed that fits. The
    claim is about fitting, so a run that stopped at the cap unfit while its training
    accuracy still rose (by more than the epoch's sampling noise) counts as cut off too."""
    rows = held_rows(results, ("pooling",))
    table = cells(rows, ["o2i", "pooling"], "test_accuracy", fitting=True)
    noise = held_rows(results, ("pooling",), kind="noise")
    noise_cells = cells(noise, ["dataset", "pooling"], "final_train_accuracy", fitting=True)
    fitted = rows[rows["fits"].astype(bool)]
    epochs = cells(fitted, ["o2i"], "epochs_to_fit")
    shown = pd.concat([view(table, ["o2i", "pooling"], "test_accuracy"),
                       view(noise_cells, ["dataset", "pooling"], "final_train_accuracy")])[[
        "o2i", "dataset", "pooling", "test_accuracy", "final_train_accuracy", "seeds", "fit",
        CUT_OFF]]
    o2is = sorted({k[0] for k in table}, reverse=True)
    if len(o2is) < 2 or not enough_seeds(table, p) or not enough_seeds(noise_cells, p):
        return INCONCLUSIVE, [("nMNIST at two O2I ratios and Gaussian noise, >= "
                               f"{p.get('min_seeds', 3)} seeds per cell", False)], shown

    def fraction(o2i):
        here = [c for k, c in table.items() if k[0] == o2i]
        return sum(c.fitted for c in here) / sum(c.n for c in here)

    high, low = fraction(o2is[0]), fraction(o2is[-1])
    checks = [(f"runs that fit at {o2is[0]:.3g} %: {high:.2f} >= {p.get('fit_high', 2 / 3):.2f}",
               high >= p.get("fit_high", 2 / 3)),
              (f"runs that fit at {o2is[-1]:.3g} %: {low:.2f} <= {p.get('fit_low', 1 / 3):.2f}",
               low <= p.get("fit_low", 1 / 3))]
    with_fits = sorted(epochs, reverse=True)
    # where only the largest O2I has runs that fit, the others take longer than any cap
    slower = (epochs[with_fits[-1]].exceeds(epochs[with_fits[0]]) if len(with_fits) >= 2
              else [k[0] for k in with_fits] == o2is[:1])
    checks.append(("epochs to fit rise beyond the spread from the largest to the smallest O2I "
                   "where runs fit: " + (", ".join(f"{o[0]:.3g} %: {epochs[o].text()}"
                                                   for o in with_fits) or "no run fits"),
                   slower))
    memorised = sum(c.fitted for c in noise_cells.values())
    total = sum(c.n for c in noise_cells.values())
    failed = sorted(f"{k[0]} {k[1]}" for k, c in noise_cells.items() if not c.fitted)
    checks.append((f"Gaussian noise memorised: {memorised}/{total} runs fit (setups where none "
                   f"does: {', '.join(failed) or 'none'})", memorised == total))
    faster = len(with_fits) >= 2 and epochs[with_fits[0]].exceeds(epochs[with_fits[-1]])
    read = {**{k: c for k, c in table.items() if k[0] in (o2is[0], o2is[-1])},
            **noise_cells}
    return decide(checks, low > high or faster or bool(failed), read), checks, shown


def class_balance(results: pd.DataFrame, p: dict) -> Outcome:
    """C7: at the O2I where the class balance varies, mean test accuracy at the balance
    farthest from `reference` (0.5) is below the reference's beyond the spread for most
    poolings (contradicted where it is above for most); the `robust` poolings (max, logsumexp)
    have the two smallest mean drops (reference minus each other balance), and the larger of
    theirs is below another pooling's by more than the two drops' spreads (contradicted where
    another pooling's drop is below both of theirs by more than the spreads)."""
    rows = held_rows(results, ("class_balance", "pooling"))
    by_o2i = rows.groupby("o2i")["class_balance"].nunique()
    if by_o2i.empty or by_o2i.max() < 2:
        return INCONCLUSIVE, [("two class balances at one O2I", False)], pd.DataFrame()
    o2i = float(by_o2i.idxmax())
    rows = rows[rows["o2i"] == o2i]
    table = cells(rows, ["pooling", "class_balance"], "test_accuracy")
    shown = view(table, ["pooling", "class_balance"], "test_accuracy")
    reference, robust = float(p.get("reference", 0.5)), list(p.get("robust", ["max",
                                                                                "logsumexp"]))
    drops: dict[str, tuple[float, float]] = {}  # pooling -> (mean drop, its spread)
    falls, rises = [], []
    for pooling in sorted({k[0] for k in table}):
        here = {float(k[1]): c for k, c in table.items() if k[0] == pooling}
        if reference not in here or len(here) < 2:
            continue
        ref = here.pop(reference)
        extreme = here[max(here, key=lambda b: abs(b - reference))]
        falls += [pooling] if ref.exceeds(extreme) else []
        rises += [pooling] if extreme.exceeds(ref) else []
        drops[pooling] = _mean_drop(ref, list(here.values()))
    if len(drops) < 3 or not enough_seeds(table, p) or not set(robust) <= set(drops):
        return INCONCLUSIVE, [(f"the poolings {robust} and another at balance {reference} and "
                               f"another, >= {p.get('min_seeds', 3)} seeds", False)], shown
    ranked = sorted(drops, key=lambda k: drops[k][0])
    others = [k for k in drops if k not in robust]
    worst_robust = max(robust, key=lambda k: drops[k][0])
    beaten = [k for k in others if drops[k][0] - drops[worst_robust][0]
              > drops[k][1] + drops[worst_robust][1]]
    beating = [k for k in others if all(drops[r][0] - drops[k][0] > drops[r][1] + drops[k][1]
                                        for r in robust)]
    checks = [(f"at {o2i:.3g} % accuracy falls beyond the spread at the most imbalanced "
               f"balance for most poolings (falls: {', '.join(falls) or 'none'}; rises: "
               f"{', '.join(rises) or 'none'})", len(falls) > len(drops) / 2),
              ("mean drop from balance {:g} per pooling: {}; {} the two smallest".format(
                  reference, ", ".join(f"{k} {drops[k][0]:+.3f}" for k in ranked),
                  " and ".join(robust)), set(ranked[:len(robust)]) == set(robust)),
              (f"{worst_robust}'s drop is below another's beyond the spread (below: "
               f"{', '.join(beaten) or 'none'})", bool(beaten))]
    contradicted = len(rises) > len(drops) / 2 or bool(beating)
    return decide(checks, contradicted, table), checks, shown


def _mean_drop(reference: Cell, others: list[Cell]) -> tuple[float, float]:
    """(mean of reference - other over the other balances, the mean of their spreads)."""
    return (sum(reference.mean - c.mean for c in others) / len(others),
            sum(reference.sd + c.sd for c in others) / len(others))


RULES = {"optimisation": optimisation, "class_balance": class_balance}
