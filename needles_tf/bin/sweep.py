"""needles-sweep: run an experiment of the paper (a definition in flags/experiments/) as a sweep.

  needles-sweep --experiment=flags/experiments/mini.toml --root=studies/mini --dry_run
  needles-sweep --experiment=flags/experiments/mini.toml --root=studies/mini --parallel=2
  needles-sweep --experiment=o2i --root=/scratch/study --executor=slurm --slurm_partition=gpu

Every grid point and seed is one needles-train run directory under <root>/runs/, named by its
settings; missing datasets are generated first, once, under <root>/data/. Re-running the same
command skips finished runs and resumes interrupted ones; --dry_run lists what would run and
what is done, and estimates the cost. Then: needles-report --root=<root>.
"""

import os
import signal
import sys

from absl import flags

from needles_tf.bin import common

FLAGS = flags.FLAGS
flags.DEFINE_string("experiment", None, "Experiment definition: a .toml file, or the name of "
                    "one in flags/experiments/ (e.g. o2i, mini); or a directory of them (e.g. "
                    "findings): the union of their runs.")
flags.DEFINE_string("root", None, "The study's directory: data/, runs/, sweep/ (logs).")
flags.DEFINE_enum("executor", "local", ["local", "slurm"], "local: a pool on this machine; "
                  "slurm: a job array on a SLURM cluster, through submitit.")
flags.DEFINE_integer("parallel", None, "Local runs at a time (default: one per GPU, else 1).",
                     lower_bound=1)
flags.DEFINE_boolean("dry_run", False, "List the runs (done, interrupted, failed, to run) and "
                     "the datasets to generate, estimate the cost, run nothing.")
flags.DEFINE_list("seeds", None, "Run these seeds instead of the definition's (e.g. 0,1).")
flags.DEFINE_list("only", None, "Run only the runs whose names match one of these shell "
                  "patterns (names as --dry_run lists them): 'nm14_32/seed=*' is one cell, "
                  "'nm14_32/seed=0' one run.")
flags.DEFINE_float("images_per_second", None, "Training speed at 64 x 64 for the cost estimate "
                   "when no run under --root has finished (scaled by pixel count).", lower_bound=0)
flags.DEFINE_string("mnist", None, "MNIST source of every nMNIST dataset (embedded | idx:DIR | "
                    "keras), replacing the definition's.")
flags.DEFINE_string("slide_dir", None, "Slides of the nCAMELYON datasets (needles-make-ncamelyon "
                    "--slide_dir).")
flags.DEFINE_string("annotation_dir", None, "Their annotations (--annotation_dir).")
flags.DEFINE_boolean("strict", False, "Stop at the first dataset that cannot be generated "
                     "(default: report it and run the rest).")
flags.DEFINE_string("slurm_partition", None, "SLURM partition (default: the cluster's).")
flags.DEFINE_integer("slurm_time", 24 * 60, "Time limit of one job in minutes; a run that "
                     "needs longer is requeued and resumes.", lower_bound=1)
flags.DEFINE_integer("slurm_gpus", 1, "GPUs per job (one run per job).", lower_bound=0)
flags.DEFINE_integer("slurm_cpus", 8, "CPU cores per job.", lower_bound=1)
flags.DEFINE_integer("slurm_mem_gb", None, "Memory per job in GB (default: the partition's).",
                     lower_bound=1)
flags.DEFINE_integer("slurm_max_concurrent", 32, "Jobs of the array running at once.",
                     lower_bound=1)
flags.DEFINE_boolean("slurm_wait", True, "Follow the jobs until they finish (progress lines); "
                     "without it, submit and return (re-run with --dry_run to see progress).")
flags.mark_flags_as_required(["experiment", "root"])

EXPERIMENTS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "flags",
                               "experiments")


def definition_path(name: str) -> str:
    """--experiment: a file or directory, or the name of a definition (or of a directory of
    them) in flags/experiments/."""
    if os.path.exists(name) or name.endswith(".toml"):
        return name
    directory = os.path.normpath(os.path.join(EXPERIMENTS_DIR, name))
    return directory if os.path.isdir(directory) else directory + ".toml"


def main(argv):
    common.no_arguments(argv)
    from needles_tf.experiments import sweep
    from needles_tf.experiments.definition import DefinitionError

    data_flags = {"nmnist": {"mnist": FLAGS.mnist} if FLAGS.mnist else {},
                  "ncamelyon": {k: getattr(FLAGS, k) for k in ("slide_dir", "annotation_dir")
                                if getattr(FLAGS, k)}}
    try:
        plan, runs = sweep.prepare(definition_path(FLAGS.experiment), FLAGS.root, data_flags,
                                   common.int_list("seeds", FLAGS.seeds), FLAGS.only)
    except (DefinitionError, OSError) as e:
        sys.exit(f"needles-sweep: error: {e}")
    if FLAGS.dry_run:
        print(sweep.dry_run_text(plan, runs, FLAGS.images_per_second))
        return
    # a kill (SIGTERM) stops the sweep as Ctrl-C does: its runs stop and keep their epochs
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        with sweep.holding_root(plan):
            runnable = sweep.generate_datasets(plan, runs, FLAGS.strict)
            if FLAGS.executor == "local":
                progress = sweep.run_locally(plan, runnable, FLAGS.parallel)
            else:
                progress = sweep.run_on_slurm(plan, runnable, sweep.SlurmSettings(
                    partition=FLAGS.slurm_partition, minutes=FLAGS.slurm_time,
                    gpus=FLAGS.slurm_gpus, cpus=FLAGS.slurm_cpus, mem_gb=FLAGS.slurm_mem_gb,
                    max_concurrent=FLAGS.slurm_max_concurrent), wait=FLAGS.slurm_wait)
    except (sweep.SweepError, OSError) as e:
        sys.exit(f"needles-sweep: error: {e}")
    except KeyboardInterrupt:
        print("\nneedles-sweep: interrupted; the running runs kept their finished epochs: run "
              "the same command to resume", file=sys.stderr)
        sys.exit(130)
    if progress is None:
        return
    failures = progress.failures()
    skipped = len(runs) - len(runnable)
    if failures or skipped:
        sys.exit(f"needles-sweep: {len(failures)} run(s) failed"
                 + (f", {skipped} not run (their dataset failed)" if skipped else "")
                 + f"; logs in {os.path.join(plan.root, 'sweep')}; re-run the same command to "
                 "retry them")
    print(f"needles-sweep: all {len(runs)} runs of {plan.experiment.name} are done; next: "
          f"needles-report --root={FLAGS.root}")


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def run():
    common.run(main, __name__)


if __name__ == "__main__":
    run()
