"""Small helpers shared by the absl binaries."""

from __future__ import annotations

import os
import signal
import sys
import threading
from collections.abc import Callable

from absl import app, flags
from absl import logging as absl_logging

from needles_tf import atomic, run_dir
from needles_tf.bin import native_log

# Set by Ctrl-C; long work checks it between steps (needles-train after every batch).
INTERRUPTED = threading.Event()


def no_arguments(argv: list[str]) -> None:
    """Binaries that take only flags reject stray positional arguments."""
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")


def require_flags(prog: str, *names: str) -> None:
    """Exits with one line naming the first of these flags that was not given."""
    for name in names:
        if not flags.FLAGS[name].value:
            sys.exit(f"{prog}: error: --{name} is required")


def int_list(flag: str, values: list[str] | None) -> tuple[int, ...] | None:
    """A comma-separated list flag as integers; a usage error naming the flag otherwise."""
    if values is None:
        return None
    try:
        return tuple(int(v) for v in values)
    except ValueError:
        raise app.UsageError(f"--{flag} must be comma-separated integers, got "
                             f"{','.join(values)!r}") from None


def warn_if_unfinished(model_dir: str) -> None:
    """Prints run_dir's warning line to stderr when the run in `model_dir` has not finished."""
    warning = run_dir.unfinished_warning(model_dir)
    if warning:
        print(warning, file=sys.stderr)


def show_and_write_json(prog: str, text: str, result: dict, output: str, what: str) -> None:
    """Prints a result, then writes it atomically as JSON: printed first, the figures are seen
    even where the write fails (a full or read-only disk), which exits with one line naming
    the file.

    Args:
      prog: the binary's name, for the error line.
      text: the result as printed.
      result: what the file holds.
      output: the JSON file.
      what: what the result is called in the messages ("metrics").
    """
    print(text, flush=True)
    try:
        atomic.write_json(output, result)
    except OSError as e:
        sys.exit(f"{prog}: error: {what} not written to {output}: {e.strerror or e}")
    print(f"{what} written to {output}")


def _adopt_help(module_name: str) -> None:
    """Makes `--help` of an installed script list the binary's flags and docstring.

    absl shows the flags of the module named by argv[0]; an installed console script's argv[0]
    is the script (`.venv/bin/needles-train`), not the module that defined the flags.
    """
    if module_name == "__main__":  # `python -m needles_tf.bin.X`: absl finds them itself
        return
    for flag in flags.FLAGS.get_key_flags_for_module(module_name):
        flags.FLAGS.register_key_flag_for_module(sys.argv[0], flag)
    main_module = sys.modules["__main__"]
    if not main_module.__doc__:
        main_module.__doc__ = sys.modules[module_name].__doc__


def _on_ctrl_c(signum, frame) -> None:
    """Ctrl-C: sets INTERRUPTED and raises KeyboardInterrupt (as Python's own handler does)."""
    INTERRUPTED.set()
    raise KeyboardInterrupt


def _raise_again_later(unraisable) -> None:
    """sys.unraisablehook: a KeyboardInterrupt that Python had to drop is sent again.

    Raised while a garbage-collection callback (JAX installs one wherever it is installed, and
    TensorFlow imports JAX), a weakref callback or a __del__ runs, the KeyboardInterrupt is
    printed and dropped, and the job would run on; here it is not printed, and the signal is
    sent again a moment later, once that code has returned.
    """
    if unraisable.exc_type is not None and issubclass(unraisable.exc_type, KeyboardInterrupt):
        resend = threading.Timer(0.01, os.kill, (os.getpid(), signal.SIGINT))
        resend.daemon = True
        resend.start()
        return
    sys.__unraisablehook__(unraisable)


def catch_ctrl_c() -> None:
    """Makes every Ctrl-C interrupt the program and set INTERRUPTED, unless SIGINT is ignored
    (a background job) or handled elsewhere."""
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        signal.signal(signal.SIGINT, _on_ctrl_c)
        sys.unraisablehook = _raise_again_later


def run(main: Callable[[list[str]], None], module_name: str) -> None:
    """Runs an absl binary: its flags in --help, quiet TensorFlow start-up, no INFO logs.

    Args:
      main: the binary's main(argv).
      module_name: the binary module's `__name__`.
    """
    _adopt_help(module_name)
    catch_ctrl_c()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

    def quiet_main(argv: list[str]) -> None:
        if not flags.FLAGS["verbosity"].present:  # INFO (e.g. the SavedModel writer's) with -v 0
            absl_logging.set_verbosity(absl_logging.WARNING)
        main(argv)

    with native_log.quiet_start_up():
        try:
            app.run(quiet_main)
        except KeyboardInterrupt:
            print(f"\n{os.path.basename(sys.argv[0])}: interrupted", file=sys.stderr)
            sys.exit(130)
