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
import os
from typing import Mapping

import numpy as np

from needles_tf.data import metadata, schema
from needles_tf.generation import mnist, resources, writer
from needles_tf.generation.workers import AHEAD_PER_WORKER

DIGIT = 28
DEFAULT_DUPLICATES = {"train": 1, "val": 2, "test": 2}
PRESETS = {64: 2, 128: 5, 256: 25, 512: 100, 1024: 400}  # canvas -> clutter of the paper
CHUNK_PIXELS = 1 << 24    # canvas pixels per writer task: 16 canvases of 1024^2, 1 of 4096^2
RECORD_BYTES = 256        # a record's framing and fields besides the PNG


def o2i(canvas_size: int, digit_size: int = DIGIT) -> float:
    """Object-to-image ratio (fraction) of one digit (28x28 by default) on a square canvas."""
    return digit_size * digit_size / canvas_size ** 2


def png_bytes(canvas_size: int, num_digits: int, digit_size: int = DIGIT) -> int:
    """About the size of one canvas's PNG (schema.encode_png), from above.

    Measured on the embedded MNIST digits: a black canvas takes 0.97 bytes per 1000 pixels
    plus about one per row; an isolated 28 px digit about 211 bytes and a 14 px one 122
    (crowded digits less, as they overlap: 164 at the paper's 400 per 1024^2), never more
    than the raw pixels and deflate's stored-block overhead.
    """
    blank = canvas_size ** 2 // 1000 + 2 * canvas_size + 100
    raw = canvas_size * (canvas_size + 1) * 1001 // 1000 + 100
    return min(raw, blank + num_digits * (100 + 15 * digit_size ** 2 // 100))


def canvas_bytes(canvas_size: int, num_digits: int, digit_size: int = DIGIT) -> int:
    """Peak bytes a worker holds for its canvases besides its baseline, from above: the canvas,
    the band of rows zlib is handed, the PNG and its copies while the example is assembled and
    pickled back with the rest of its writer task (tests/test_nmnist_large.py measures it)."""
    record = png_bytes(canvas_size, num_digits, digit_size) + RECORD_BYTES
    return (canvas_size ** 2 + schema.PNG_BAND_BYTES
            + (4 + 2 * chunk_images(canvas_size)) * record)


def chunk_images(canvas_size: int) -> int:
    """Canvases per writer task: 16 up to 1024^2, fewer above, one from 4096^2 on, so that
    what is in flight between the workers and the writer stays a few canvases' worth."""
    return max(1, min(16, CHUNK_PIXELS // canvas_size ** 2))


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
    """Adds digits[rows] at corners onto a black canvas, saturating at 255 -> uint8 [C, C].

    Each add saturates in place on the uint8 canvas (a + min(d, 255 - a)), the same as summing
    in a wide type and clipping once, as every digit is >= 0, but the canvas is the only
    canvas-sized array: a wide sum plus its clip took 9 bytes per pixel (2.3 GiB at 16384^2)
    and as long as the PNG encoding at 8192^2, where this is as fast as the wide sum at 1024^2.
    """
    canvas = np.zeros((canvas_size, canvas_size), np.uint8)
    size = digits.shape[1]
    for row, (y, x) in zip(rows, corners):
        patch = canvas[y:y + size, x:x + size]
        patch += np.minimum(digits[row], 255 - patch)
    return canvas


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
    """Generates (or resumes) an nMNIST dataset of TFRecords + dataset.json; returns metadata.

    Each worker holds a few canvases at a time whatever the canvas size (uint8, encoded in
    bands of rows, one per writer task from 4096^2 on), so 8192^2 and larger canvases stream to
    disk. Before any work, a dataset that cannot fit is refused with the figures.

    Raises:
        resources.NoRoom: one canvas per worker does not fit in the available memory, or the
            dataset's estimated size does not fit on the disk at output_dir.
        ValueError, mnist.MnistSourceError, metadata.DatasetError: bad arguments or files.
    """
    data = mnist.load_mnist(mnist_source)
    composer = NmnistComposer(data, canvas_size, num_clutter, needle_digit, duplicates, seed,
                              digit_size)
    _check_room(composer, output_dir, workers)
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
        progress=progress, chunk_size=chunk_images(canvas_size))


def _check_room(composer: NmnistComposer, output_dir: str, workers: int) -> None:
    """Refuses (resources.NoRoom) a dataset whose canvases do not fit in memory, one per worker
    plus the records in flight to the writer, or whose records do not fit on the disk at
    output_dir (shards already there count as room: they are kept, or replaced by --overwrite).
    The processes' own memory (Python, NumPy, TensorFlow in the writer: about 0.1 GiB per worker
    and 0.9 GiB) is left out, so that only what cannot fit is refused; a worker that runs out of
    memory all the same is reported by the writer."""
    size = composer.canvas_size
    record = png_bytes(size, composer.num_clutter + 1, composer.digit_size) + RECORD_BYTES
    images = sum(composer.split_size(s) for s in metadata.SPLITS)
    workers, chunk = max(1, min(workers, images)), chunk_images(size)
    existing = sum(os.path.getsize(os.path.join(output_dir, f)) for f in (
        os.listdir(output_dir) if os.path.isdir(output_dir) else ())
        if metadata.SHARD_RE.match(f))
    resources.check_room(
        f"--canvas_size={size}", what="one canvas", workers=workers,
        per_worker=canvas_bytes(size, composer.num_clutter + 1, composer.digit_size),
        overhead=AHEAD_PER_WORKER * workers * chunk * record,
        disk=max(0, images * record - existing), output_dir=output_dir,
        memory_helps="fewer --workers or a smaller --canvas_size need less memory",
        disk_helps="another --output_dir, a smaller --canvas_size or fewer images "
                   "(--duplicates, --train_duplicates) need less disk")
