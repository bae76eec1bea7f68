"""nMNIST: "is there a 3 in this image?" -- MNIST digits scattered on a large empty canvas.

Positive image: exactly one needle digit plus `num_clutter` clutter digits; negative: num_clutter
+ 1 clutter digits. Clutter is drawn with replacement from the other classes of the same split;
digits keep 28x28, are placed uniformly at random fully inside the canvas, and overlaps add and
saturate at 255. Item 2k of a split is the k-th positive, item 2k+1 its paired negative, so every
prefix of a split is balanced. Each item has its own random generator seeded by (seed, split,
index): the output does not depend on the order or the process in which items are made.

Needle reuse: each needle digit of the val and test splits is used `duplicates` times (default
2) and of the train split `train_duplicates` times (default 1). With full MNIST this gives the
paper's 11276 / 1972 / 4040 images per O2I; train_duplicates=2 gives its largest training set,
22552.
"""

import functools
import os
from dataclasses import asdict, dataclass

import numpy as np

from needles_tf.data import records
from needles_tf.data.mnist import SPLITS, Digits, load_mnist

DIGIT = 28
PAPER_PRESETS = {64: 2, 128: 5, 256: 25, 512: 100, 1024: 400}  # canvas -> clutter digits


@dataclass(frozen=True)
class NMnistConfig:
    canvas_size: int = 64
    num_clutter: int = 2
    needle_digit: int = 3
    duplicates: int = 2
    train_duplicates: int = 1
    mnist: str = "embedded"
    seed: int = 0

    def __post_init__(self):
        if self.canvas_size < DIGIT:
            raise ValueError(f"canvas_size must be at least {DIGIT}; got {self.canvas_size}")
        if self.num_clutter < 0:
            raise ValueError(f"num_clutter must be >= 0; got {self.num_clutter}")
        if not 0 <= self.needle_digit <= 9:
            raise ValueError(f"needle_digit must be 0..9; got {self.needle_digit}")
        if self.duplicates < 1 or self.train_duplicates < 1:
            raise ValueError("duplicates and train_duplicates must be >= 1")

    @property
    def o2i(self) -> float:
        """Object-to-image ratio of a positive: 28*28 / canvas^2."""
        return DIGIT * DIGIT / self.canvas_size ** 2

    def reuse(self, split: str) -> int:
        return self.train_duplicates if split == "train" else self.duplicates


def split_size(digits: Digits, config: NMnistConfig, split: str) -> int:
    """Images in a split: 2 x needles x reuse (one negative per positive)."""
    return 2 * int(np.sum(digits.labels == config.needle_digit)) * config.reuse(split)


def compose(digits: Digits, config: NMnistConfig, split: str, index: int):
    """Item `index` of a split: (canvas uint8 [S, S, 1], label, bbox or None, source ids)."""
    rng = np.random.default_rng([config.seed, SPLITS.index(split), index])
    needles = np.flatnonzero(digits.labels == config.needle_digit)
    clutter = np.flatnonzero(digits.labels != config.needle_digit)
    label = 1 - index % 2
    chosen = list(rng.choice(clutter, config.num_clutter + 1 - label, replace=True))
    if label:
        chosen.insert(0, needles[(index // 2) % len(needles)])
    size = config.canvas_size
    corners = rng.integers(0, size - DIGIT + 1, size=(len(chosen), 2))
    canvas = np.zeros((size, size), np.uint16)
    for digit, (y, x) in zip(chosen, corners):
        canvas[y:y + DIGIT, x:x + DIGIT] += digits.images[digit]
    bbox = None
    if label:
        y, x = corners[0]
        bbox = (int(y), int(x), int(y) + DIGIT, int(x) + DIGIT)
    image = np.minimum(canvas, 255).astype(np.uint8)[..., None]
    return image, label, bbox, [int(d) for d in chosen], corners


@functools.lru_cache(maxsize=2)
def _digits(source: str) -> dict[str, Digits]:
    return load_mnist(source)


@dataclass(frozen=True)
class ExampleMaker:
    """Picklable make_example for records.write_dataset; loads MNIST once per process."""

    config: NMnistConfig

    def __call__(self, split: str, index: int) -> tuple[bytes, int]:
        image, label, bbox, chosen, _ = compose(_digits(self.config.mnist)[split], self.config,
                                                split, index)
        source = f"mnist:{split}:" + ",".join(map(str, chosen))
        return records.encode_example(image, label, self.config.o2i if label else 0.0, bbox,
                                      source, clutter_count=self.config.num_clutter), label


def make_nmnist(output_dir: str | os.PathLike, config: NMnistConfig, num_shards: int = 4,
                workers: int = 1, overwrite: bool = False, progress: bool = True) -> dict:
    """Generates all three splits of nMNIST into `output_dir`; returns the dataset.json dict."""
    digits = _digits(config.mnist)
    sizes = {split: split_size(digits[split], config, split) for split in SPLITS}
    for split, size in sizes.items():
        if size == 0:
            raise ValueError(f"MNIST source {config.mnist!r} has no digit {config.needle_digit} "
                             f"in its {split} split")
    params = {**asdict(config), "o2i": config.o2i}
    extra = {"image": {"height": config.canvas_size, "width": config.canvas_size, "channels": 1}}
    return records.write_dataset(output_dir, "nmnist", params, sizes, ExampleMaker(config),
                                 num_shards, workers, overwrite, progress, extra)
