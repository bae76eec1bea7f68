"""The paper's step learning-rate schedule and its epoch-scaling rule for small training sets."""

from __future__ import annotations

from typing import Callable, Sequence

# The paper trains 200 epochs on 11276 images; smaller training sets train proportionally more
# epochs (epochs and milestones x REFERENCE_SIZE // train_size) so the number of updates is kept.
REFERENCE_SIZE = 11276


def scale_epochs(epochs: int, milestones: Sequence[int], train_size: int | None,
                 reference_size: int = REFERENCE_SIZE) -> tuple[int, tuple[int, ...]]:
    """(epochs, milestones) scaled by reference_size // train_size (never below x1).

    train_size None or reference_size 0 leaves them unchanged.
    """
    if not train_size or not reference_size:
        return epochs, tuple(milestones)
    factor = max(1, reference_size // train_size)
    return epochs * factor, tuple(m * factor for m in milestones)


def step_learning_rate(base: float, milestones: Sequence[int],
                       decay: float) -> Callable[[int], float]:
    """Epoch -> learning rate: `base`, multiplied by `decay` at each milestone epoch."""
    if base <= 0:
        raise ValueError(f"learning_rate must be > 0, got {base}")
    if not 0 < decay <= 1:
        raise ValueError(f"lr_decay must be in (0, 1], got {decay}")
    if list(milestones) != sorted(set(milestones)) or any(m < 1 for m in milestones):
        raise ValueError(f"lr_milestones must be increasing positive epochs, got {milestones}")
    steps = tuple(milestones)

    def learning_rate(epoch: int) -> float:
        return base * decay ** sum(epoch >= m for m in steps)

    return learning_rate
