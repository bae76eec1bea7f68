"""needles-sweep: definitions -> runs, a real 2-run sweep interrupted and resumed, its report,
and needles-train on Gaussian noise (the memorisation experiment)."""

import glob
import json
import os
import signal
import sys
import time

import numpy as np
import pytest
import tensorflow as tf

from needles_tf.experiments import cost, runner
from needles_tf.experiments.definition import (
    TRAIN_FLAGS,
    DefinitionError,
    expand,
    load_experiment,
)
from needles_tf.experiments.plan import DONE, FAILED, INTERRUPTED, PENDING, Plan, record_exit
from needles_tf.experiments.report import write_report
from needles_tf.generation import nmnist
from needles_tf.input.noise import NoiseSpec, make_noise_dataset
from tests.tiny_runs import WORKTREE, finish, start_binary

EXPERIMENTS = os.path.join(WORKTREE, "flags", "experiments")
TINY_TRAIN = """
[train]
receptive_field = 9
blocks = [1, 1, 1, 1]
width_scale = 0.0625
normalization = false
optimizer = "adam"
learning_rate = 1e-3
lr_milestones = [100]
batch_size = 16
log_images = 0
"""


def write(path, text):
    with open(path, "w") as f:
        f.write(text)
    return str(path)


def test_definition_expands_to_its_grid(tmp_path):
    write(tmp_path / "base.cfg", "# base\n--pooling=max\n--width_scale=1\n--nonormalization\n")
    write(tmp_path / "data.toml", '[datasets.a]\ngenerator = "nmnist"\ncanvas_size = 32\n'
          '[datasets.b]\ngenerator = "nmnist"\ncanvas_size = 40\n')
    path = write(tmp_path / "exp.toml", """
description = "two grids"
seeds = [0, 1]
datasets_file = "data.toml"
[train]
flagfile = "base.cfg"
width_scale = 0.5
[[grid]]
dataset = ["a", "b"]
pooling = ["max", "mean", "attention"]
[[grid]]
dataset = ["a"]
pooling = ["max"]
normalization = false
[[grid]]
noise = ["32:64"]
""")
    experiment = load_experiment(path)
    runs = expand(experiment)
    # 2 x 3 x 2 seeds; the second grid repeats runs of the first (normalization=false is the
    # flagfile's); noise 1 x 2 seeds
    assert len(runs) == 12 + 2
    names = {run.name for run in runs}
    assert len(names) == len(runs)
    assert "a/width_scale=0.5,seed=0" in names  # pooling max = the flagfile's: not in the name
    assert "b/pooling=attention,width_scale=0.5,seed=1" in names
    assert "noise_32_64/width_scale=0.5,seed=1" in names
    plan = Plan(experiment, str(tmp_path / "root"), {"nmnist": {"mnist": "idx:/m"}})
    run = next(r for r in runs if r.name == "b/pooling=mean,width_scale=0.5,seed=1")
    command = plan.train_command(run)
    assert f"--flagfile={tmp_path / 'base.cfg'}" in command
    assert {"--pooling=mean", "--width_scale=0.5", "--seed=1"} <= set(command)
    assert f"--data_dir={plan.data_dir('b')}" in command
    assert "--mnist=idx:/m" in plan.dataset_command(experiment.datasets["a"])
    noise = next(r for r in runs if r.dataset is None)
    assert "--noise=32:64" in plan.train_command(noise)


@pytest.mark.parametrize("text, message", [
    ('[grid]\ndataset = ["missing"]\n', "not defined under .datasets."),
    ('[grid]\nnoise = ["32:8"]\n[datasets.a]\ngenerator = "nmnist"\n[train]\nx = 1\n'
     '[extra]\n', "unknown keys"),
    ('[datasets.a]\ngenerator = "imagenet"\n', "generator = one of"),
    ('[grid]\ndataset = ["a"]\nnoise = ["8:8"]\n[datasets.a]\ngenerator = "nmnist"\n',
     "not both"),
    ("seeds = [", "cannot be read as TOML"),
    ('[grid]\nnoise = ["8:8"]\npoolng = ["max"]\n', "'poolng' is not a needles-train flag "
     "\\(did you mean 'pooling'\\?\\)"),
    ('[train]\nseed = 3\n', "must not set seed"),
    ('[grid]\nnoise = ["8:8"]\n[verdict]\nchanges = "cap raised"\n',
     "changes must be a list of strings"),
])
def test_bad_definitions_name_file_and_problem(tmp_path, text, message):
    path = write(tmp_path / "bad.toml", text)
    with pytest.raises(DefinitionError, match=message) as error:
        load_experiment(path)
    assert str(path) in str(error.value)


def test_train_flags_are_the_binarys():
    from absl import flags

    import needles_tf.bin.train as train_binary

    defined = {f.name for f in flags.FLAGS.get_key_flags_for_module(train_binary)}
    assert TRAIN_FLAGS == defined


def test_shipped_definitions_load():
    paths = [p for p in glob.glob(os.path.join(EXPERIMENTS, "*.toml"))
             if not p.endswith("datasets.toml")]
    names = {os.path.basename(p)[:-5] for p in paths}
    assert {"o2i", "o2i_train_size", "capacity", "capacity_small_data", "receptive_field",
            "pooling", "optimisation", "class_balance", "memorisation", "optimiser_search",
            "mini"} <= names
    for path in paths:
        experiment = load_experiment(path)
        runs = expand(experiment)
        grid_points = sum(int(np.prod([len(v) for v in g.values()])) for g in experiment.grids)
        assert 0 < len(runs) <= grid_points * len(experiment.seeds), path
        if experiment.train_flagfile:
            assert os.path.isfile(experiment.train_flagfile), path
        for spec in experiment.datasets.values():
            assert spec.flagfile is None or os.path.isfile(spec.flagfile), spec


def test_only_selects_runs_by_name_and_a_pattern_that_matches_none_is_an_error(tmp_path):
    from needles_tf.experiments.sweep import prepare

    findings = os.path.join(EXPERIMENTS, "findings")
    _, cell = prepare(findings, str(tmp_path), only=["nm14_32/seed=*"])
    assert [run.name for run in cell] == [f"nm14_32/seed={s}" for s in (0, 1, 2)]
    _, two = prepare(findings, str(tmp_path), seeds=[1], only=["nm14_32/seed=*", "nm14_45/*"])
    assert [run.name for run in two] == ["nm14_32/seed=1", "nm14_45/seed=1"]
    with pytest.raises(DefinitionError, match=r"--only=nm14_33/\* matches none of the \d+ runs"):
        prepare(findings, str(tmp_path), only=["nm14_33/*"])


def test_run_states_and_failures(tmp_path):
    path = write(tmp_path / "e.toml", '[datasets.a]\ngenerator = "nmnist"\n'
                 '[grid]\ndataset = ["a"]\n')
    plan = Plan(load_experiment(path), str(tmp_path))
    (run,) = expand(plan.experiment)
    assert plan.state(run) == PENDING
    os.makedirs(os.path.dirname(plan.log_path(run)))
    write(plan.log_path(run), "Traceback\nneedles-train: error: bad data here\n")
    record_exit(plan.exit_path(run), plan.log_path(run), 1)
    assert plan.state(run) == FAILED and plan.failure(run) == "needles-train: error: bad data here"
    record_exit(plan.exit_path(run), plan.log_path(run), 130)  # Ctrl-C: stopped, not failed
    model_dir = plan.model_dir(run)
    os.makedirs(os.path.join(model_dir, "checkpoint"))
    write(os.path.join(model_dir, "checkpoint", "state.json"), '{"epoch": 2}')
    assert plan.state(run) == INTERRUPTED
    write(os.path.join(model_dir, "summary.json"), '{"status": "finished"}')
    assert plan.state(run) == DONE


def test_a_run_the_sweep_stopped_is_not_failed(tmp_path):
    """A command we interrupt is recorded as stopped whatever it exits with (a Python caught
    while it starts exits 1); one that fails on its own keeps its status and error line."""
    log, exit_path = str(tmp_path / "r.log"), str(tmp_path / "r.exit.json")
    process = runner.start([sys.executable, "-c", "import time; time.sleep(30)"], log)
    time.sleep(0.5)
    runner.interrupt(process)  # SIGINT, or SIGTERM where this suite ignores SIGINT
    assert runner.finish(process, log, exit_path, stopped=True) == 130
    failing = [sys.executable, "-c", "import sys; sys.exit('tool: error: no such file x')"]
    assert runner.run(failing, log, exit_path) == 1
    with open(exit_path) as f:
        assert json.load(f) == {"returncode": 1, "error": "tool: error: no such file x"}
    assert open(log).read().count("=== ") == 2  # both attempts, appended


def test_cost_counts_an_nmnist_dataset_before_it_exists(tmp_path):
    """--dry_run's images: 2 x needles x duplicates per split, before generating anything."""
    path = write(tmp_path / "e.toml", '[datasets.a]\ngenerator = "nmnist"\nmnist = "embedded"\n'
                 'canvas_size = 40\ntrain_duplicates = 2\n[train]\nepochs = 3\n'
                 'train_size = 500\nreference_size = 0\n[grid]\ndataset = ["a"]\n')
    plan = Plan(load_experiment(path), str(tmp_path / "root"))
    (run,) = expand(plan.experiment)
    threes = {"train": 350, "val": 50, "test": 100}  # the embedded split of 500 per class
    sizes, image = cost.split_sizes(plan, run)
    assert image == (40, 40)
    assert sizes == {"train": 500, "val": 2 * threes["val"] * 2, "test": 2 * threes["test"] * 2}
    assert 2 * threes["train"] * 2 > 500  # train_size selects from 1,400
    estimate = cost.estimate(plan, [run], images_per_second=100)
    assert estimate["images"] == 3 * 500 + 4 * 200 + 400 and estimate["unknown"] == 0
    trained, evaluated = 3 * 500, 4 * 200 + 400
    seconds = (trained + cost.EVAL_COST * evaluated) * 40 * 40 / (100 * 64 * 64)
    assert estimate["hours"] == pytest.approx(seconds / 3600)


def test_noise_shares_cover_each_global_batch():
    """Under 2 replicas each takes its half of every global batch of the epoch's order."""
    spec = NoiseSpec.parse("8x6x2:20")
    assert (spec.height, spec.width, spec.channels, spec.count) == (8, 6, 2, 20)
    with pytest.raises(ValueError, match="SIZE:COUNT"):
        NoiseSpec.parse("64")

    def batches(context=None):
        return [(im.numpy(), y.numpy()) for im, y in make_noise_dataset(
            spec, "train", 8, True, seed=3, epochs=(1, 2), input_context=context)]

    whole = batches()
    shares = [batches(tf.distribute.InputContext(1, 0, 2))]
    assert [len(y) for _, y in whole] == [8, 8, 4]
    assert [len(y) for _, y in shares[0]] == [4, 4, 4, 4, 4, 0]  # last batch: 4 and none
    joined = np.concatenate([im for im, _ in shares[0]])
    assert np.array_equal(joined, np.concatenate([im for im, _ in whole]))
    evaluated = [y.numpy() for _, y in make_noise_dataset(spec, "val", 8, False, seed=3)]
    assert sum(len(y) for y in evaluated) == 20  # val: as many as train, up to 512


def test_sweep_interrupted_resumed_and_reported(tmp_path):
    """A real 3-run sweep (two O2I ratios, and Gaussian noise for longer): interrupted once the
    nMNIST runs have finished, resumed without training them again; then its report."""
    root = tmp_path / "root"
    for canvas in (32, 40):  # datasets made here: the sweep finds them ready
        nmnist.generate_nmnist(str(root / "data" / f"c{canvas}"), canvas_size=canvas,
                               num_clutter=1, num_shards=1, progress=False,
                               duplicates={"train": 1, "val": 1, "test": 1})
    path = write(tmp_path / "tiny.toml", f"""
description = "tiny"
seeds = [0]
[datasets.c32]
generator = "nmnist"
[datasets.c40]
generator = "nmnist"
{TINY_TRAIN}
[[grid]]
dataset = ["c32", "c40"]
epochs = 1
train_size = 64
reference_size = 0
[[grid]]
noise = ["24:48"]
epochs = 30
""")
    plan = Plan(load_experiment(path), str(root))
    runs = expand(plan.experiment)
    nmnist_runs, noise_run = runs[:2], runs[2]
    flags = [f"--experiment={path}", f"--root={root}", "--parallel=2"]
    dry = finish(start_binary("sweep", *flags, "--dry_run"))
    assert dry.returncode == 0 and "3 pending" in dry.stdout and "c32: ready" in dry.stdout
    sweep = start_binary("sweep", *flags)
    summaries = [os.path.join(plan.model_dir(run), "summary.json") for run in nmnist_runs]
    waited_for = [*summaries, plan.log_path(noise_run)]  # the noise run started, not finished
    deadline = time.time() + 400  # generous: a loaded machine (the loop ends once they exist)
    while not all(map(os.path.exists, waited_for)) and time.time() < deadline:
        time.sleep(0.2)
    sweep.send_signal(signal.SIGINT)
    first = finish(sweep)
    assert first.returncode == 130, first.stdout + first.stderr
    assert "run the same command to resume" in first.stderr
    assert [plan.state(run) for run in runs[:2]] == [DONE, DONE]
    assert plan.state(noise_run) in (PENDING, INTERRUPTED)  # stopped, not failed
    stamps = [os.path.getmtime(p) for p in summaries]

    resumed = finish(start_binary("sweep", *flags))
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert "all 3 runs of tiny are done" in resumed.stdout
    assert [os.path.getmtime(p) for p in summaries] == stamps  # not trained again
    assert [open(plan.log_path(run)).read().count("=== ") for run in runs] == [1, 1, 2]
    with open(os.path.join(plan.model_dir(noise_run), "summary.json")) as f:
        noise = json.load(f)  # needles-train --noise=24:48, the memorisation experiment
    assert noise["dataset"]["kind"] == "noise" and noise["epochs"] == 30
    assert noise["final_train_accuracy"] >= 0.9  # random labels, memorised

    sizes = [cost.split_sizes(plan, run)[0] for run in runs]
    expected = sum(e * s["train"] + (e + 1) * s["val"] + s["test"]
                   for e, s in zip((1, 1, 30), sizes))
    assert sizes[0]["train"] == 64 and sizes[2] == {"train": 48, "val": 48, "test": 48}
    estimate = cost.estimate(plan, runs)
    assert estimate["images"] == expected and estimate["hours"] > 0
    written = write_report(str(root), say=lambda line: None)
    assert written["runs"] == 3 and {"4", "9a", "9b"} <= set(written["figures"])
    table = open(os.path.join(root, "report", "results.csv")).read().splitlines()
    assert len(table) == 4 and "noise" in table[3]
    assert os.path.getsize(os.path.join(root, "report", "fig4.pdf")) > 1000
