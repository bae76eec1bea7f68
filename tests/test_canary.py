"""Crash canary: every shipped flagfile that trains runs a few steps and an evaluation.

Each runs `needles-train` in its own process at the flagfile's own width and batch size, on a
64 x 64 nMNIST canvas (the demo's, where oneDNN's AVX-512 convolutions crashed), so a native
crash (SIGSEGV, SIGILL, ...) fails one test instead of killing the suite. New flagfiles under
flags/ are found by the test: a flagfile trains if it sets --epochs.
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


def exit_description(returncode: int) -> str:
    """'exit 0', 'exit 1' or the fatal signal's name ('killed by SIGSEGV')."""
    if returncode < 0:
        return f"killed by {signal.Signals(-returncode).name}"
    return f"exit {returncode}"


def assert_clean_exit(result: subprocess.CompletedProcess, what: str) -> None:
    tail = "\n".join(result.stderr.strip().splitlines()[-15:])
    assert result.returncode == 0, f"{what}: {exit_description(result.returncode)}\n{tail}"


@pytest.fixture(scope="module")
def canary_runs(tmp_path_factory):
    """Starts every training flagfile at once (2 cores) on 32 / 32 / 32 images of the demo's
    nMNIST: one compiled training step at the flagfile's batch (where oneDNN crashed), then
    validation and test."""
    data_dir = str(tmp_path_factory.mktemp("canary_data"))
    composer = nmnist.NmnistComposer(mnist.load_mnist("embedded"), canvas_size=64, num_clutter=2)
    writer.write_dataset(data_dir, kind="nmnist", params={"canary": True},
                          image={"height": 64, "width": 64, "channels": 1},
                          split_sizes={"train": 32, "val": 32, "test": 32},
                          make_example=composer, num_shards=1, progress=False)
    runs_root = tmp_path_factory.mktemp("canary_runs")
    processes = {}
    for flagfile in TRAINING_FLAGFILES:
        model_dir = runs_root / flagfile.replace("/", "_")
        processes[flagfile] = (model_dir, start_binary(
            "train", f"--flagfile={FLAGS_DIR / flagfile}", f"--data_dir={data_dir}",
            f"--model_dir={model_dir}", "--epochs=1", "--log_images=0"))
    return {flagfile: (model_dir, finish(process, timeout=300))
            for flagfile, (model_dir, process) in processes.items()}


def test_the_shipped_training_flagfiles_are_found():
    assert {"train/paper.cfg", "demo/nmnist_train.cfg"} <= set(TRAINING_FLAGFILES)
    assert not any(name.startswith("nmnist/") for name in TRAINING_FLAGFILES)


@pytest.mark.parametrize("flagfile", TRAINING_FLAGFILES)
def test_flagfile_trains_and_evaluates_without_crashing(canary_runs, flagfile):
    model_dir, result = canary_runs[flagfile]
    assert_clean_exit(result, f"needles-train --flagfile=flags/{flagfile}")
    summary = json.loads((model_dir / "summary.json").read_text())
    shipped = {line.split("=", 1)[0][2:]: line.split("=", 1)[1]
               for line in (FLAGS_DIR / flagfile).read_text().splitlines()
               if line.startswith("--") and "=" in line}
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
