"""The command line as a user meets it: every shipped flagfile that trains runs (a crash
canary), --help of the installed scripts, Ctrl-C and resume.

Crash canary: each shipped training flagfile runs a few steps and an evaluation in a process
of its own at the flagfile's own width and batch size, on a small nMNIST canvas (the demo's
64 x 64 for the demo's flagfiles), so a native crash (SIGSEGV, SIGILL, ...) fails one test
instead of killing the suite. New flagfiles under flags/ are found by the test: a flagfile trains
if it sets --epochs. Flagfiles that differ only in their schedule (epochs, learning rate)
compute the same thing and share one run.
"""

import gc
import json
import os
import pathlib
import re
import signal
import subprocess
import sys
import threading
import time

import pytest
from tiny_runs import WORKTREE, finish, start_binary

from needles_tf import run_dir
from needles_tf.bin import common, native_log
from needles_tf.generation import mnist, nmnist, writer
from needles_tf.training.callbacks import StopWhenSet
from needles_tf.training.trainer import TrainConfig, train

SCRIPTS = os.path.dirname(sys.executable)  # run.sh installs the package into this venv
FLAGS_DIR = pathlib.Path(WORKTREE) / "flags"
TRAINING_FLAGFILES = sorted(
    str(p.relative_to(FLAGS_DIR)) for p in FLAGS_DIR.rglob("*.cfg")
    if any(line.startswith("--epochs=") for line in p.read_text().splitlines()))
# Flags that change how long the same computation runs, not what it computes (the training
# step's shapes and kernels): the findings' recipe shares the demo's canary run.
SCHEDULE_ONLY = {"epochs", "lr_milestones", "lr_decay", "learning_rate", "seed", "stop_after_fit",
                 "reference_size", "class_balance", "log_images", "score_detection"}


def shipped_settings(flagfile: str) -> dict[str, str]:
    """The flags a flagfile sets ("--nonormalization" as {"nonormalization": ""})."""
    lines = (FLAGS_DIR / flagfile).read_text().splitlines()
    return dict((line[2:].split("=", 1) + [""])[:2] for line in lines if line.startswith("--"))


def computation(settings: dict[str, str]) -> tuple[tuple[str, str], ...]:
    """What a training with these flags computes (model, batch, optimizer, precision, ...)."""
    return tuple(sorted((k, v) for k, v in settings.items() if k not in SCHEDULE_ONLY))


# One run per distinct computation: flagfiles that differ only in their schedule (the demo's
# warm-up and main run) share it.
CANARY_OF = {flagfile: next(f for f in TRAINING_FLAGFILES
                            if computation(shipped_settings(f)) ==
                            computation(shipped_settings(flagfile)))
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


CTRL_C_FLAGS = ("--receptive_field=9", "--blocks=1,1,1,1", "--width_scale=0.0625",
                "--nonormalization", "--epochs=1000", "--batch_size=32", "--log_images=0",
                "--verbose=0")


@pytest.fixture(scope="module")
def shipped_runs(tmp_path_factory):
    """Runs two processes at a time on the 2 cores (their TensorFlow starts and tracing
    overlap): a run per distinct computation of the shipped flagfiles on 32 / 32 / 32 nMNIST
    images (one compiled training step at the flagfile's width and batch, where oneDNN crashed,
    then validation and test), and, once a core is free, a long tiny run that gets a Ctrl-C
    after its first epoch. Returns the canary runs and the tiny run (data, model dir, result)."""
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
    while sum(process.poll() is None for _, process in processes.values()) > 1:
        time.sleep(0.2)
    tiny_dir = runs_root / "ctrl_c"
    tiny = start_binary("train", *CTRL_C_FLAGS, f"--data_dir={data_dirs[32]}",
                        f"--model_dir={tiny_dir}")
    checkpoint = tiny_dir / run_dir.CHECKPOINT_DIR / "state.json"
    deadline = time.time() + 120
    while not checkpoint.exists() and tiny.poll() is None and time.time() < deadline:
        time.sleep(0.2)
    # One Ctrl-C, even where it lands in JAX's garbage-collection hook (the test environment
    # has JAX), which drops its KeyboardInterrupt: training stops after the batch.
    tiny.send_signal(signal.SIGINT)
    interrupted = finish(tiny, timeout=60)
    canaries = {flagfile: (model_dir, finish(process, timeout=300))
                for flagfile, (model_dir, process) in processes.items()}
    return canaries, (data_dirs[32], tiny_dir, interrupted)


def test_the_shipped_training_flagfiles_are_found():
    assert {"train/paper.cfg", "demo/nmnist_train.cfg"} <= set(TRAINING_FLAGFILES)
    assert not any(name.startswith("nmnist/") for name in TRAINING_FLAGFILES)
    # the demos' flagfiles differ in their schedules only and share a run; another width or
    # batch would not
    demo = CANARY_OF["demo/nmnist_train.cfg"]
    for flagfile in ("demo/nmnist_warmup_train.cfg", "demo/ncamelyon_train.cfg"):
        assert CANARY_OF[flagfile] == demo
    for flag, value in (("width_scale", "0.125"), ("batch_size", "16")):
        changed = {**shipped_settings("demo/nmnist_train.cfg"), flag: value}
        assert computation(changed) != computation(shipped_settings(demo))


@pytest.mark.parametrize("flagfile", TRAINING_FLAGFILES)
def test_flagfile_trains_and_evaluates_without_crashing(shipped_runs, flagfile):
    model_dir, result = shipped_runs[0][CANARY_OF[flagfile]]
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


@pytest.mark.parametrize("script, flag", [("needles-train", "--data_dir"),
                                          ("needles-make-nmnist", "--canvas_size"),
                                          ("needles-predict", "--saved_model"),
                                          ("needles-saliency", "--num_images")])
def test_installed_scripts_list_their_flags(script, flag):
    path = os.path.join(SCRIPTS, script)
    if not os.path.exists(path):
        pytest.skip(f"{script} is not installed beside {sys.executable} (pip install -e .)")
    result = subprocess.run([path, "--help"], capture_output=True, text=True, timeout=60,
                            check=False)
    assert flag in result.stdout, result.stdout[-500:]
    assert "cuInit" not in result.stdout + result.stderr


def test_ctrl_c_stops_with_one_line_and_the_same_command_resumes(shipped_runs, capsys):
    data_dir, model_dir, result = shipped_runs[1]
    stderr = result.stderr
    assert result.returncode == 130, stderr[-2000:]
    last = stderr.strip().splitlines()[-1]
    assert "Traceback" not in stderr
    assert last.startswith("needles-train: interrupted after epoch ")
    assert last.endswith("; run the same command to resume")
    done = int(last.split("after epoch ")[1].split(";")[0])
    assert done >= 1

    # the same settings in-process (no second TensorFlow start), with a Ctrl-C whose
    # KeyboardInterrupt was lost before the first batch: it stops training after that batch
    config = TrainConfig(data_dir, str(model_dir), receptive_field=9, blocks=(1, 1, 1, 1),
                         width_scale=0.0625, normalization=False, epochs=1000, batch_size=32,
                         log_images=0)
    pressed = threading.Event()
    pressed.set()
    with pytest.raises(KeyboardInterrupt):
        train(config, verbose=2, extra_callbacks=[StopWhenSet(pressed)])
    assert f"resuming at epoch {done + 1} of 1000" in capsys.readouterr().out.splitlines()


class SlowFinaliser:
    def __del__(self):
        busy(0.6)


def busy(seconds: float) -> None:
    """Python code that runs for `seconds` (a pending Ctrl-C is raised inside it)."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        pass


def collect_with_a_slow_callback() -> None:
    def slow_callback(phase, info):
        busy(0.3)

    gc.callbacks.append(slow_callback)
    try:
        gc.collect()
    finally:
        gc.callbacks.remove(slow_callback)


def finalise_slowly() -> None:
    finaliser = SlowFinaliser()
    del finaliser


@pytest.mark.parametrize("dropping", [collect_with_a_slow_callback, finalise_slowly])
def test_ctrl_c_that_python_would_drop_still_interrupts(dropping):
    """Every binary: a Ctrl-C whose KeyboardInterrupt is raised where Python drops it (a
    garbage-collection callback such as JAX's, a __del__) interrupts the program once that code
    has returned, with no "Exception ignored" traceback."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    previous_hook = sys.unraisablehook
    common.catch_ctrl_c()
    returned = interrupted = False
    try:
        threading.Timer(0.1, os.kill, (os.getpid(), signal.SIGINT)).start()
        try:
            dropping()  # the signal arrives while it runs
            returned = True
            time.sleep(3)
        except KeyboardInterrupt:
            interrupted = True
    finally:
        signal.signal(signal.SIGINT, previous)
        sys.unraisablehook = previous_hook
    assert interrupted and returned, "the Ctrl-C was dropped"
    assert common.INTERRUPTED.is_set()
    common.INTERRUPTED.clear()
