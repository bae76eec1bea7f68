"""Crash canary: every shipped flagfile that trains runs a few steps and an evaluation.

Each runs `needles-train` in its own process at the flagfile's own width and batch size, on a
small nMNIST canvas (the demo's 64 x 64 for the demo's flagfiles), so a native
crash (SIGSEGV, SIGILL, ...) fails one test instead of killing the suite. New flagfiles under
flags/ are found by the test: a flagfile trains if it sets --epochs. Flagfiles that differ only
in their schedule (epochs, learning rate) compute the same thing and share one run.
"""

import json
import os
import pathlib
import re
import signal
import subprocess
import sys

import pytest
from tiny_runs import WORKTREE, finish, start_binary

from needles_tf.bin import native_log
from needles_tf.generation import mnist, nmnist, writer

FLAGS_DIR = pathlib.Path(WORKTREE) / "flags"
TRAINING_FLAGFILES = sorted(
    str(p.relative_to(FLAGS_DIR)) for p in FLAGS_DIR.rglob("*.cfg")
    if any(line.startswith("--epochs=") for line in p.read_text().splitlines()))
# Flags that change how long the same computation runs, not what it computes.
SCHEDULE_ONLY = {"epochs", "lr_milestones", "lr_decay", "learning_rate", "seed"}


def shipped_settings(flagfile: str) -> dict[str, str]:
    """The flags a flagfile sets ("--nonormalization" as {"nonormalization": ""})."""
    lines = (FLAGS_DIR / flagfile).read_text().splitlines()
    return dict((line[2:].split("=", 1) + [""])[:2] for line in lines if line.startswith("--"))


def computation(flagfile: str) -> tuple[tuple[str, str], ...]:
    """What a flagfile's training computes (model, batch, optimizer, precision, ...)."""
    return tuple(sorted((k, v) for k, v in shipped_settings(flagfile).items()
                        if k not in SCHEDULE_ONLY))


# One run per distinct computation: flagfiles that differ only in their schedule (the demo's
# warm-up and main run) share it.
CANARY_OF = {flagfile: next(f for f in TRAINING_FLAGFILES
                            if computation(f) == computation(flagfile))
             for flagfile in TRAINING_FLAGFILES}


def exit_description(returncode: int) -> str:
    """'exit 0', 'exit 1' or the fatal signal's name ('killed by SIGSEGV')."""
    if returncode < 0:
        return f"killed by {signal.Signals(-returncode).name}"
    return f"exit {returncode}"


def assert_clean_exit(result: subprocess.CompletedProcess, what: str) -> None:
    tail = "\n".join(result.stderr.strip().splitlines()[-15:])
    assert result.returncode == 0, f"{what}: {exit_description(result.returncode)}\n{tail}"


def canvas_of(flagfile: str) -> int:
    """The demo's flagfiles run on the demo's 64 x 64 canvas (where oneDNN's AVX-512
    convolutions crashed); the others, whose data may be of any size, on 32 x 32."""
    return 64 if flagfile.startswith("demo/") else 32


@pytest.fixture(scope="module")
def canary_runs(tmp_path_factory):
    """Starts a run per distinct computation at once (2 cores) on 32 / 32 / 32 images of
    nMNIST: one compiled training step at the flagfile's batch (where oneDNN crashed), then
    validation and test."""
    data_dirs = {}
    for canvas in (32, 64):
        data_dirs[canvas] = str(tmp_path_factory.mktemp(f"canary_data_{canvas}"))
        composer = nmnist.NmnistComposer(mnist.load_mnist("embedded"), canvas_size=canvas,
                                         num_clutter=2)
        writer.write_dataset(data_dirs[canvas], kind="nmnist", params={"canary": True},
                              image={"height": canvas, "width": canvas, "channels": 1},
                              split_sizes={"train": 32, "val": 32, "test": 32},
                              make_example=composer, num_shards=1, progress=False)
    runs_root = tmp_path_factory.mktemp("canary_runs")
    processes = {}
    for flagfile in sorted(set(CANARY_OF.values())):
        model_dir = runs_root / flagfile.replace("/", "_")
        processes[flagfile] = (model_dir, start_binary(
            "train", f"--flagfile={FLAGS_DIR / flagfile}",
            f"--data_dir={data_dirs[canvas_of(flagfile)]}", f"--model_dir={model_dir}",
            "--epochs=1", "--log_images=0"))
    return {flagfile: (model_dir, finish(process, timeout=300))
            for flagfile, (model_dir, process) in processes.items()}


def test_the_shipped_training_flagfiles_are_found():
    assert {"train/paper.cfg", "demo/nmnist_train.cfg"} <= set(TRAINING_FLAGFILES)
    assert not any(name.startswith("nmnist/") for name in TRAINING_FLAGFILES)
    # the warm-up shares the main run's computation; a change of width or batch would not
    assert CANARY_OF["demo/nmnist_warmup_train.cfg"] == CANARY_OF["demo/nmnist_train.cfg"]
    assert CANARY_OF["demo/ncamelyon_train.cfg"] == "demo/ncamelyon_train.cfg"
    assert computation("demo/nmnist_train.cfg") != computation("demo/ncamelyon_train.cfg")


@pytest.mark.parametrize("flagfile", TRAINING_FLAGFILES)
def test_flagfile_trains_and_evaluates_without_crashing(canary_runs, flagfile):
    model_dir, result = canary_runs[CANARY_OF[flagfile]]
    assert_clean_exit(result, f"needles-train --flagfile=flags/{CANARY_OF[flagfile]}")
    summary = json.loads((model_dir / "summary.json").read_text())
    shipped = shipped_settings(flagfile)
    assert summary["config"]["normalization"] == ("nonormalization" not in shipped)
    assert summary["config"]["width_scale"] == float(shipped.get("width_scale", 1))
    assert summary["config"]["batch_size"] == int(shipped.get("batch_size", 32))
    assert summary["test"]["count"] == 32 and summary["epochs"] == 1
    # quiet: no CUDA probe lines on a machine without a GPU, one line per epoch into a pipe
    if not os.path.exists(native_log.NVIDIA_DRIVER):
        assert "cuInit" not in result.stderr and "InitializeLog" not in result.stderr
    assert "did not fully read the dataset" not in result.stderr
    assert "oneDNN custom operations" not in result.stderr
    assert re.search(r"^1/1 - .*val_accuracy", result.stdout, re.MULTILINE), result.stdout


def test_a_native_crash_fails_the_canary_instead_of_the_suite():
    crash = subprocess.run([sys.executable, "-c", "import ctypes; ctypes.string_at(0)"],
                           capture_output=True, text=True, check=False)
    assert exit_description(crash.returncode) == "killed by SIGSEGV"
    with pytest.raises(AssertionError, match="killed by SIGSEGV"):
        assert_clean_exit(crash, "a process that reads address 0")
