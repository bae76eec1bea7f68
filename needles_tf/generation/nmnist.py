"""nMNIST: "is there a 3 in this image?" - MNIST digits scattered on a large black canvas.

Composition (paper, appendix A.1), per split of the MNIST source:

* needle digits = the split's digits of class `needle_digit` (3), in source order; clutter pool =
  all its other digits.
* Image `index` of a split: pair p = index // 2; even indices are positives, odd ones negatives
  (one negative per positive). Positive p uses needle number p % num_needles, so each needle
  digit is used `duplicates[split]` times and the first num_needles pairs use each once.
* Positive: the needle plus `num_clutter` clutter digits; negative: num_clutter + 1 clutter
  digits. Clutter is drawn with replacement. Digits keep 28x28 (or are resized to digit_size,
  see below) and are placed with their top-left corner uniform in [0, canvas - 28], i.e. fully
  inside; overlapping pixels add and saturate at 255 (uint8). The needle's box (ymin, xmin, ymax,
  xmax; max exclusive) and O2I = 28^2 / canvas^2 are recorded.
* digit_size (not the paper's): digits resized to digit_size^2 (anti-aliased), so a given O2I
  ratio comes at a smaller canvas, e.g. 14 px digits give O2I 1.2 % at 128 x 128 instead of
  256 x 256: a quarter of the pixels, for studies that must run small.
* Every image draws from its own generator seeded by (seed, split, index), so the data set is the
  same whatever the number of worker processes or the order images are made in.

Default duplicates are train 1, val 2, test 2: with full MNIST (5,638 / 493 / 1,010 threes) this
gives the paper's 11,276 / 1,972 / 4,040 images; train duplicates 2 give its largest training
set, 22,552.
"""

from __future__ import annotations

import dataclasses
from typing import Mapping

import numpy as np

from needles_tf.data import metadata, schema
from needles_tf.generation import mnist, writer

DIGIT = 28
DEFAULT_DUPLICATES = {"train": 1, "val": 2, "test": 2}
PRESETS = {64: 2, 128: 5, 256: 25, 512: 100, 1024: 400}  # canvas -> clutter of the paper


def o2i(canvas_size: int, digit_size: int = DIGIT) -> float:
    """Object-to-image ratio (fraction) of one digit (28x28 by default) on a square canvas."""
    return digit_size * digit_size / canvas_size ** 2


def split_size(labels: np.ndarray, needle_digit: int, duplicates: int) -> int:
    """Images in a split: 2 (positive + negative) x needles x duplicates."""
    return 2 * int(np.sum(labels == needle_digit)) * duplicates


@dataclasses.dataclass(frozen=True)
class Plan:
    """Where the digits of one image go: rows into the split's digits and top-left corners."""

    label: int
    rows: np.ndarray       # int [K] digit rows of the split
    corners: np.ndarray    # int [K, 2] (y, x)
    needle: int | None     # position in rows/corners of the needle (positives), else None
    digit_size: int = DIGIT

    @property
    def bbox(self) -> tuple[int, int, int, int] | None:
        if self.needle is None:
            return None
        y, x = (int(v) for v in self.corners[self.needle])
        return y, x, y + self.digit_size, x + self.digit_size


def render(digits: np.ndarray, rows: np.ndarray, corners: np.ndarray,
           canvas_size: int) -> np.ndarray:
    """Adds digits[rows] at corners onto a black canvas, saturating at 255 -> uint8 [C, C]."""
    # Sum in a wide integer type and clip once: the same as saturating after every add. numpy
    # slice adds cost ~2 us per digit, well below the PNG encoding of the canvas.
    wide = np.uint16 if len(rows) <= 257 else np.uint32  # 257 * 255 < 2**16
    canvas = np.zeros((canvas_size, canvas_size), wide)
    size = digits.shape[1]
    for row, (y, x) in zip(rows, corners):
        canvas[y:y + size, x:x + size] += digits[row]
    return np.minimum(canvas, 255).astype(np.uint8)


def _resized(images: np.ndarray, size: int) -> np.ndarray:
    """uint8 [N, 28, 28] digits at size x size (anti-aliased); unchanged at 28."""
    if size == images.shape[1] or not len(images):
        return images
    from skimage.transform import resize

    scaled = resize(images, (len(images), size, size), anti_aliasing=True, preserve_range=True)
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


class NmnistComposer:
    """Plans and encodes nMNIST images; picklable, so it is the writer's `make_example`."""

    def __init__(self, data: mnist.MnistData, canvas_size: int, num_clutter: int,
                 needle_digit: int = 3, duplicates: Mapping[str, int] | None = None,
                 seed: int = 0, digit_size: int = DIGIT):
        if not 4 <= digit_size <= DIGIT:
            raise ValueError(f"digit_size must be in [4, {DIGIT}], got {digit_size}")
        if canvas_size < digit_size:
            raise ValueError(f"canvas_size must be >= {digit_size} (the digit size), got "
                             f"{canvas_size}")
        if num_clutter < 0:
            raise ValueError(f"num_clutter must be >= 0, got {num_clutter}")
        if not 0 <= needle_digit <= 9:
            raise ValueError(f"needle_digit must be 0..9, got {needle_digit}")
        self.duplicates = dict(DEFAULT_DUPLICATES if duplicates is None else duplicates)
        if any(d < 0 for d in self.duplicates.values()):
            raise ValueError(f"duplicates must be >= 0, got {self.duplicates}")
        self.canvas_size, self.num_clutter = canvas_size, num_clutter
        self.needle_digit, self.seed = needle_digit, seed
        self.digit_size = digit_size
        self.digits = {s: _resized(data[s].images, digit_size) for s in metadata.SPLITS}
        self.ids = {s: data[s].ids for s in metadata.SPLITS}
        self.needles = {s: np.flatnonzero(data[s].labels == needle_digit)
                        for s in metadata.SPLITS}
        self.clutter = {s: np.flatnonzero(data[s].labels != needle_digit)
                        for s in metadata.SPLITS}
        for s in metadata.SPLITS:
            if self.split_size(s) and not len(self.clutter[s]) and num_clutter:
                raise ValueError(f"{data.source}: split {s!r} has no clutter digits")

    def split_size(self, split: str) -> int:
        return 2 * len(self.needles[split]) * self.duplicates.get(split, 0)

    def plan(self, split: str, index: int) -> Plan:
        """Which digits go where in image `index` of `split` (a function of seed, split, index)."""
        if not 0 <= index < self.split_size(split):
            raise IndexError(f"{split} image {index} out of range [0, {self.split_size(split)})")
        rng = np.random.default_rng([self.seed, metadata.SPLITS.index(split), index])
        positive = index % 2 == 0
        num_digits = self.num_clutter + 1
        pool = self.clutter[split]
        rows = pool[rng.integers(0, len(pool), num_digits)] if len(pool) else np.zeros(
            num_digits, np.int64)
        corners = rng.integers(0, self.canvas_size - self.digit_size + 1, (num_digits, 2))
        if positive:
            needles = self.needles[split]
            rows[0] = needles[(index // 2) % len(needles)]
            return Plan(1, rows, corners, needle=0, digit_size=self.digit_size)
        return Plan(0, rows, corners, needle=None, digit_size=self.digit_size)

    def image(self, split: str, index: int) -> tuple[np.ndarray, Plan]:
        plan = self.plan(split, index)
        return render(self.digits[split], plan.rows, plan.corners, self.canvas_size), plan

    def __call__(self, split: str, index: int) -> tuple[bytes, int]:
        canvas, plan = self.image(split, index)
        source_id = f"{split}[{index}]"
        if plan.needle is not None:
            source_id += f" needle={self.ids[split][plan.rows[plan.needle]]}"
        serialized = schema.encode_example(
            canvas, label=plan.label, o2i=o2i(self.canvas_size) if plan.label else 0.0,
            bbox=plan.bbox, source_id=source_id, clutter_count=self.num_clutter + 1 - plan.label)
        return serialized, plan.label


def generate_nmnist(output_dir: str, *, canvas_size: int, num_clutter: int,
                    needle_digit: int = 3, duplicates: Mapping[str, int] | None = None,
                    mnist_source: str = "embedded", seed: int = 0, num_shards: int = 8,
                    workers: int = 1, overwrite: bool = False, progress: bool = True,
                    digit_size: int = DIGIT) -> dict:
    """Generates (or resumes) an nMNIST dataset of TFRecords + dataset.json; returns metadata."""
    data = mnist.load_mnist(mnist_source)
    composer = NmnistComposer(data, canvas_size, num_clutter, needle_digit, duplicates, seed,
                              digit_size)
    params = {"mnist": data.source, "canvas_size": canvas_size, "num_clutter": num_clutter,
              "needle_digit": needle_digit, "duplicates": composer.duplicates, "seed": seed,
              "o2i": o2i(canvas_size, digit_size)}
    if digit_size != DIGIT:  # datasets of 28 px digits keep their former identity
        params["digit_size"] = digit_size
    return writer.write_dataset(
        output_dir, kind="nmnist", params=params,
        image={"height": canvas_size, "width": canvas_size, "channels": 1},
        split_sizes={s: composer.split_size(s) for s in metadata.SPLITS},
        make_example=composer, num_shards=num_shards, workers=workers, overwrite=overwrite,
        progress=progress)
