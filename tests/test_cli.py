"""The command line as a user meets it: --help of the installed scripts, Ctrl-C and resume."""

import gc
import os
import signal
import subprocess
import sys
import threading
import time

import pytest
from tiny_runs import start_binary, tiny_nmnist

from needles_tf import run_dir
from needles_tf.bin import common
from needles_tf.training.callbacks import StopWhenSet
from needles_tf.training.trainer import TrainConfig, train

SCRIPTS = os.path.dirname(sys.executable)  # run.sh installs the package into this venv


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


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    return tiny_nmnist(str(tmp_path_factory.mktemp("cli_data")), 0,
                       {"train": 1, "val": 1, "test": 1})


def test_ctrl_c_stops_with_one_line_and_the_same_command_resumes(tiny_data, tmp_path, capsys):
    flags = ("--receptive_field=9", "--blocks=1,1,1,1", "--width_scale=0.0625", "--nonormalization",
             f"--data_dir={tiny_data}", f"--model_dir={tmp_path / 'run'}", "--epochs=50",
             "--train_size=64", "--reference_size=0", "--batch_size=32", "--log_images=0")
    process = start_binary("train", *flags)
    checkpoint = tmp_path / "run" / run_dir.CHECKPOINT_DIR / "state.json"
    deadline = time.time() + 120
    while not checkpoint.exists() and process.poll() is None and time.time() < deadline:
        time.sleep(0.2)
    # One Ctrl-C, even where it lands in JAX's garbage-collection hook (the test environment
    # has JAX), which drops its KeyboardInterrupt: training stops after the batch.
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 130, stderr[-2000:]
    last = stderr.strip().splitlines()[-1]
    assert "Traceback" not in stderr
    assert last.startswith("needles-train: interrupted after epoch ")
    assert last.endswith("; run the same command to resume")
    done = int(last.split("after epoch ")[1].split(";")[0])
    assert done >= 1

    # the same settings in-process (no second TensorFlow start), with a Ctrl-C whose
    # KeyboardInterrupt was lost before the first batch: it stops training after that batch
    config = TrainConfig(tiny_data, str(tmp_path / "run"), receptive_field=9,
                         blocks=(1, 1, 1, 1), width_scale=0.0625, normalization=False,
                         epochs=50, train_size=64, reference_size=0, batch_size=32,
                         log_images=0)
    pressed = threading.Event()
    pressed.set()
    with pytest.raises(KeyboardInterrupt):
        train(config, verbose=2, extra_callbacks=[StopWhenSet(pressed)])
    assert f"resuming at epoch {done + 1} of 50" in capsys.readouterr().out.splitlines()


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
