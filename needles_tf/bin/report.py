"""needles-report: one table and the paper's figures from the runs of a study.

  needles-report --root=studies/mini
  needles-report --root=/scratch/study --output_dir=paper_figures
  needles-report --root=studies/mini --examples     # also example images of its datasets
  needles-report --root=runs/findings --claims=flags/experiments/findings --output_dir=docs/findings
  needles-report --results=docs/findings/results.csv --claims=flags/experiments/findings \
      --output_dir=docs/findings     # verdicts again from the committed table alone

Reads every run's summary.json under --root (nothing else) and writes results.csv (one row per
run), aggregates.csv (mean and std over seeds), the figures the runs allow (fig4.png/.pdf, ...)
and report.md into --output_dir (default <root>/report).
"""

import glob
import os
import sys

from absl import flags

from needles_tf.bin import common

FLAGS = flags.FLAGS
flags.DEFINE_string("root", None, "The study's directory (needles-sweep --root), or any "
                    "directory of needles-train runs.")
flags.DEFINE_string("output_dir", None, "Where the report goes (default <root>/report).")
flags.DEFINE_boolean("examples", False, "Also draw example images per O2I ratio (the paper's "
                     "Figs. 2, 10, 11) from the datasets in <root>/data and --data_dirs.")
flags.DEFINE_list("data_dirs", [], "Dataset directories to draw examples from (implies "
                  "--examples).")
flags.DEFINE_integer("examples_per_class", 2, "Positive and negative examples per dataset.",
                     lower_bound=1)
flags.DEFINE_string("claims", None, "Also judge the paper's claims: a definition with a "
                    "[verdict] table, or a directory of them (e.g. flags/experiments/findings); "
                    "writes findings.md (verdicts, their numbers, the cells).")
flags.DEFINE_string("results", None, "Report from this results.csv (e.g. a committed "
                    "docs/findings/results.csv) instead of the runs under --root; needs "
                    "--output_dir.")


def main(argv):
    common.no_arguments(argv)
    from needles_tf.data.metadata import DatasetError
    from needles_tf.experiments.definition import DefinitionError, load_members
    from needles_tf.experiments.report import write_report

    if FLAGS.results is None and (not FLAGS.root or not os.path.isdir(FLAGS.root)):
        sys.exit(f"needles-report: error: --root {FLAGS.root!r} is not a directory (or give "
                 "--results=results.csv)")
    if FLAGS.results is not None and not FLAGS.output_dir:
        sys.exit("needles-report: error: --results needs --output_dir")
    output_dir = FLAGS.output_dir or os.path.join(FLAGS.root, "report")
    try:
        claims = load_members(FLAGS.claims) if FLAGS.claims else []
        results = _read_results(FLAGS.results) if FLAGS.results else None
        written = write_report(FLAGS.root or FLAGS.results, output_dir, results=results,
                               claims=claims)
    except (ValueError, DefinitionError) as e:
        sys.exit(f"needles-report: error: {e}")
    except OSError as e:
        sys.exit(f"needles-report: error: cannot write the report in {output_dir}: {e}")
    if FLAGS.examples or FLAGS.data_dirs:
        from needles_tf.experiments.examples import draw_examples

        data_dirs = sorted(os.path.dirname(p) for p in glob.glob(
            os.path.join(FLAGS.root or "", "data", "*", "dataset.json"))) + list(FLAGS.data_dirs)
        if not data_dirs:
            sys.exit(f"needles-report: error: no dataset in {FLAGS.root}/data and no "
                     "--data_dirs to draw examples from")
        try:
            for kind_dirs, name in _datasets_by_kind(data_dirs):
                paths = draw_examples(kind_dirs, os.path.join(output_dir, f"examples_{name}"),
                                      FLAGS.examples_per_class)
                print(f"examples: {paths[0]}")
        except DatasetError as e:
            sys.exit(f"needles-report: error: {e}")
    print(f"report: {written['report']}")


def _read_results(path):
    """A results.csv written by needles-report (one row per run)."""
    import pandas as pd

    try:
        return pd.read_csv(path)
    except (OSError, ValueError) as e:
        raise ValueError(f"--results {path}: cannot be read as a results table ({e})") from None


def _datasets_by_kind(data_dirs):
    """The dataset directories grouped by kind (nmnist, ncamelyon): one figure each."""
    from needles_tf.data.metadata import DatasetError, read_metadata

    groups = {}
    for data_dir in data_dirs:
        try:
            kind = read_metadata(data_dir)["kind"]
        except DatasetError:
            kind = "data"  # draw_examples names the problem
        groups.setdefault(kind, []).append(data_dir)
    return [(dirs, kind) for kind, dirs in sorted(groups.items())]


def run():
    common.run(main, __name__)


if __name__ == "__main__":
    run()
