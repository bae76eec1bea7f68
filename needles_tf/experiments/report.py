"""A study's report: results.csv (one row per run), aggregates.csv (mean and std over seeds),
the paper's figures its runs allow (PNG and PDF) and report.md with the tables and figures."""

from __future__ import annotations

import math
import os
from typing import Any, Callable, Sequence

import pandas as pd

from needles_tf import atomic
from needles_tf.experiments import figures, plots
from needles_tf.experiments.definition import Experiment
from needles_tf.experiments.findings import write_findings
from needles_tf.experiments.results import (
    FIT_ACCURACY,
    TRAINED_ACCURACY,
    aggregate,
    collect,
    markdown_table,
)

RULES = f"""\
How to read the figures (the paper's rules):
- *Training accuracy* is the epoch's running mean over its training batches (as Keras reports
  it while training), not a separate clean pass. A run *fits* when it reaches
  {FIT_ACCURACY:.0%} in some epoch; *epochs to fit* is the first such epoch.
- Figs. 7 and 8 show, per bar, the mean test accuracy of the seeds that fit; a configuration
  where no seed fits is shown at chance (0.5) and hatched. Fig. 9a: epochs to fit of the seeds
  that fit, hatched where not every seed fits; Fig. 9b: how many seeds fit.
- Fig. 6a / 14: mean validation accuracy of the runs above {TRAINED_ACCURACY:.0%} training
  accuracy (the paper's footnote 5), over capacities; Fig. 6b / 15: the smallest training set
  whose mean validation accuracy (over seeds) reaches 70 % / 85 % in some configuration
  (hatched: no size does).
- Each figure holds the settings it does not vary at one value: the paper's (max pooling,
  s = 1, class balance 0.5, RMSprop at 5e-5) where the study has it, else the most common.
"""


def write_report(root: str, output_dir: str | None = None,
                 say: Callable[[str], None] = print, results: pd.DataFrame | None = None,
                 claims: Sequence[Experiment] = ()) -> dict[str, Any]:
    """Writes the report of the finished runs under `root` (or of the `results` table, e.g.
    a committed results.csv) into `output_dir` (default <root>/report); with `claims`
    (definitions with a [verdict] table) also findings.md. Returns {"runs": count, "figures":
    {name: paths}, "report": path, "verdicts": [...]}.

    Raises:
        ValueError: no finished run under `root`.
    """
    output_dir = output_dir or os.path.join(root, "report")
    results = collect(root) if results is None else results
    if results.empty:
        raise ValueError(f"{root}: no finished run (no summary.json with status 'finished') "
                         "here; run needles-sweep first")
    os.makedirs(output_dir, exist_ok=True)
    table = aggregate(results)
    _write_csv(results, os.path.join(output_dir, "results.csv"))
    _write_csv(table, os.path.join(output_dir, "aggregates.csv"))
    drawn = {}
    for name, draw in figures.FIGURES.items():
        figure = draw(results)
        if figure is not None:
            drawn[name] = plots.save(figure, os.path.join(output_dir, f"fig{name}"))
    say(f"{len(results)} runs, {len(table)} configurations; figures: "
        + (", ".join(drawn) or "none (the runs vary too little)"))
    path = os.path.join(output_dir, "report.md")
    atomic.write_text(path, _markdown(root, results, table, drawn))
    verdicts = write_findings(os.path.join(output_dir, "findings.md"), results, list(claims),
                              drawn, root) if claims else []
    for verdict in verdicts:
        say(f"{verdict.claim}: {verdict.outcome}")
    return {"runs": len(results), "figures": drawn, "report": path, "verdicts": verdicts}


def _write_csv(frame: pd.DataFrame, path: str) -> None:
    with atomic.atomic_path(path) as temporary:
        frame.to_csv(temporary, index=False)


def _markdown(root: str, results: pd.DataFrame, table: pd.DataFrame, drawn: dict) -> str:
    lines = [f"# Study report: {os.path.abspath(root)}", "",
             f"{len(results)} finished runs in {len(table)} configurations "
             f"({', '.join(sorted(results['kind'].unique()))}). Tables: `results.csv` (one row "
             "per run, every setting and metric), `aggregates.csv` (mean and standard "
             "deviation over seeds).", "", "## Accuracy per configuration", "",
             markdown_table(_summary_columns(table)), "", RULES, "## Figures", ""]
    for name, paths in drawn.items():
        doc = (figures.FIGURES[name].__doc__ or "").strip().replace("\n", " ")
        doc = " ".join(doc.split())
        lines += [f"### Fig. {name}", "", doc, "", f"![Fig. {name}]({os.path.basename(paths[0])})",
                  ""]
    return "\n".join(lines)


def _summary_columns(table: pd.DataFrame) -> pd.DataFrame:
    """The aggregate table's readable part: data, the settings that vary, accuracies."""
    varying = [k for k in ("receptive_field", "width_scale", "pooling", "train_size",
                           "class_balance", "optimizer", "learning_rate", "lr_milestones")
               if table[k].nunique() > 1]
    out = table[["dataset", "o2i_label", *varying]].copy()
    out.columns = ["dataset", "O2I", *varying]
    out["test accuracy"] = [_pm(m, s) for m, s in zip(table["test_accuracy_mean"],
                                                      table["test_accuracy_std"])]
    out["training accuracy"] = [_pm(m, s) for m, s in zip(table["final_train_accuracy_mean"],
                                                          table["final_train_accuracy_std"])]
    out["fit"] = [f"{int(f)}/{int(n)}" for f, n in zip(table["fitted"], table["seeds"])]
    return out


def _pm(mean: float, std: float) -> str:
    return f"{mean:.3f}" + ("" if math.isnan(std) else f" ± {std:.3f}")
