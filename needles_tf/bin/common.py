"""Small helpers shared by the absl binaries."""

from __future__ import annotations

from absl import app


def no_arguments(argv: list[str]) -> None:
    """Binaries that take only flags reject stray positional arguments."""
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")


def int_list(flag: str, values: list[str] | None) -> tuple[int, ...] | None:
    """A comma-separated list flag as integers; a usage error naming the flag otherwise."""
    if values is None:
        return None
    try:
        return tuple(int(v) for v in values)
    except ValueError:
        raise app.UsageError(f"--{flag} must be comma-separated integers, got "
                             f"{','.join(values)!r}") from None
