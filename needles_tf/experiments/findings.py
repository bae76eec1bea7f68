"""findings.md: the verdict on each claim of a study's definitions, with the numbers behind it.

For each definition with a [verdict] table (experiments/verdicts.py): the claim, the paper's
figure, our setting (the definition's description), changes made after the study began (the
[verdict] table's `changes`), the verdict, the checks with their numbers and the cells (mean ±
standard deviation over seeds, seeds that fit, seeds cut off while improving), the figure;
then, per cell of the study, how many seeds fit and how the runs stopped (best epoch against
the cap); then the paper's nCAMELYON claims, which need CAMELYON slides, with the definitions
that would measure them.
"""

from __future__ import annotations

import inspect
import os

import pandas as pd

from needles_tf import atomic
from needles_tf.experiments.cells import CUT_OFF, cut_off
from needles_tf.experiments.definition import Experiment
from needles_tf.experiments.figures import CHANCE_FOR_UNFIT
from needles_tf.experiments.results import SETTINGS, markdown_table
from needles_tf.experiments.verdicts import RULES, Verdict, judge

NOT_MEASURED = [
    ("nCAMELYON: accuracy is reasonable above O2I 1 % and falls to chance below", "4",
     "o2i"),
    ("nCAMELYON: the smallest receptive field (9) performs best", "7b", "receptive_field"),
    ("nCAMELYON: mean and attention pooling are best at the smallest O2I", "8b", "pooling"),
    ("nCAMELYON: capacity helps less than on nMNIST", "5c", "capacity"),
]


def judge_all(results: pd.DataFrame, members: list[Experiment]) -> list[tuple[Experiment,
                                                                             Verdict]]:
    """The verdict of every definition that states one, in claim order."""
    judged = [(m, judge(results, m.verdict)) for m in members if m.verdict]
    return sorted(judged, key=lambda mv: mv[1].claim)


def write_findings(path: str, results: pd.DataFrame, members: list[Experiment],
                   figures: dict[str, tuple[str, ...]], source: str) -> list[Verdict]:
    """Writes findings.md at `path` for the runs in `results` (read from `source`); `figures`:
    the report's drawn figures by name (fig4 -> paths). Returns the verdicts."""
    judged = judge_all(results, members)
    lines = [f"# Findings: {len(results)} runs from {source}", "",
             "Each claim's rule was fixed in its definition before the runs "
             "(flags/experiments/findings/ for the miniature study); what was changed after the "
             "study began is listed under the claim, with when and why. `needles-report "
             "--claims=DIR` computes the verdicts from results.csv alone. A difference counts only"
             " beyond the seeds' spread (mean ± standard deviation intervals that do not overlap)."
             " 'Fit': the training accuracy (the running mean over an epoch's batches, as Keras "
             "reports it) reaches 99 % in some epoch within the cap; a run stops early once it has"
             " held 99 % for the epochs its stop rule says (summary.json's stop_rule), else at the"
             " cap. An O2I ratio is 'informative' where some cell's mean test accuracy reaches the"
             " rule's `informative` level (0.6 unless the rule says otherwise); below it every "
             "setting is near chance, so C2, C3, C5 and C8 take the smallest informative ratio as "
             "their small O2I, and C4 needs its win at an informative one. No verdict rests on "
             "runs cut off while still improving: a run is cut off when it stopped at its cap, not"
             " fit, with its best validation epoch its last (a noise run: whenever it stopped at "
             "the cap unfit; for C6, which is about fitting, also when its training accuracy rose "
             "in its last epoch by more than its sampling noise); where most seeds of a cell the "
             "rule compares were cut off, the verdict is inconclusive. Each rule's text below is "
             "the rule function's own description (experiments/verdicts.py, fit_verdicts.py).", "",
             "| claim | paper | figure | verdict |", "|---|---|---|---|"]
    for member, verdict in judged:
        lines.append(f"| {verdict.claim} | {member.verdict.get('paper', '')} | "
                     f"{member.verdict.get('figure', '')} | **{verdict.outcome}** |")
    for member, verdict in judged:
        figure = str(member.verdict.get("figure", ""))
        lines += ["", f"## {verdict.claim}: {member.verdict.get('paper', '')}", "",
                  f"- Paper: Fig. {figure}" if figure else "- Paper: see the claim",
                  f"- Our setting: {member.description} (`{os.path.basename(member.path)}`)",
                  _rule_line(member.verdict),
                  *[f"- Changed after the study began: {change}"
                    for change in member.verdict.get("changes", [])],
                  f"- Verdict: **{verdict.outcome}**", ""]
        lines += [f"  - [{'x' if ok else ' '}] {text}" for text, ok in verdict.checks]
        if not verdict.cells.empty:
            lines += ["", markdown_table(verdict.cells)]
        lines += [line for name in member.figures if name in figures
                  for line in ("", f"![Fig. {name}](fig{name}.png)", *_note(name))]
    lines += ["", "## Every cell: seeds that fit, how the runs stopped", "",
              "Per configuration: its seeds; how many fit; how many the stop rule stopped "
              "(fit) and how many ran to their cap; the mean over seeds of the best validation "
              "epoch (the model kept) and of the last epoch trained, with the cap; the runs cut "
              "off while improving (the accuracy claims' test; C6's own adds the rising "
              "training accuracy).", "",
              markdown_table(stop_table(results)), "", "## Not measured here", "",
              "These claims need CAMELYON16/17 slides, which this machine does not have; the "
              "definitions in flags/experiments/ measure them on a cluster "
              "(`needles-sweep --experiment=NAME --slide_dir=... --annotation_dir=...`):", ""]
    lines += [f"- {claim} (Fig. {fig}): `flags/experiments/{name}.toml`"
              for claim, fig, name in NOT_MEASURED]
    atomic.write_text(path, "\n".join(lines) + "\n")
    return [verdict for _, verdict in judged]


def _rule_line(verdict: dict) -> str:
    """The rule's name, its numbers and what it computes (its function's docstring)."""
    name = verdict.get("rule")
    numbers = ", ".join(f"{k} = {v}" for k, v in verdict.items()
                        if k not in ("claim", "paper", "figure", "rule", "changes"))
    text = " ".join((inspect.getdoc(RULES[name]) or "").split()) if name in RULES else ""
    return f"- Rule: `{name}`" + (f" {numbers}" if numbers else "") + (
        f". {text}" if text else "")


def _note(figure: str) -> tuple[str, ...]:
    if figure not in CHANCE_FOR_UNFIT:
        return ()
    return ("", f"Fig. {figure} draws the paper's rule: a configuration none of whose seeds "
            "fits its training set within the cap stands at chance (hatched); the verdict "
            "reads every run's test accuracy (the table above).")


def stop_table(results: pd.DataFrame) -> pd.DataFrame:
    """Per configuration: seeds, seeds that fit, runs stopped by the fit rule / at the cap,
    mean best epoch and mean last epoch against the cap (epochs), runs cut off while
    improving."""
    varying = [k for k in SETTINGS if k != "epochs" and results[k].astype(str).nunique() > 1]
    keys = ["dataset", *varying]
    # tables from before epoch_cap: --epochs, unknown where a run went past it (scaled up)
    given = results.get("epoch_cap", pd.Series(index=results.index, dtype=float))
    fallback = results["epochs"].where(results["stopped_epoch"] <= results["epochs"])
    results = results.assign(cap=given.fillna(fallback), cut=cut_off(results))
    table = results.astype({k: str for k in varying}).groupby(keys, dropna=False).agg(
        seeds=("seed", "count"), fit=("fits", "sum"),
        stopped_fit=("stop_reason", lambda s: int((s == "fit").sum())),
        best_epoch=("best_epoch", "mean"), last_epoch=("stopped_epoch", "mean"),
        cap=("cap", "max"), cut=("cut", "sum")).reset_index()
    table["fit"] = [f"{int(f)}/{n}" for f, n in zip(table["fit"], table["seeds"])]
    table["stopped (fit / cap)"] = [f"{s} / {n - s}" for s, n in
                                    zip(table["stopped_fit"], table["seeds"])]
    caps = ["?" if pd.isna(c) else f"{c:g}" for c in table["cap"]]
    table["best / last epoch (cap)"] = [f"{b:.1f} / {e:.1f} ({c})" for b, e, c in zip(
        table["best_epoch"], table["last_epoch"], caps)]
    table[CUT_OFF] = table["cut"].astype(int)
    return table[[*keys, "seeds", "fit", "stopped (fit / cap)", "best / last epoch (cap)",
                  CUT_OFF]]
