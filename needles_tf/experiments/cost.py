"""What a sweep will cost: images to process, and hours at a measured training speed.

A run processes epochs x training images (epochs scaled for small training sets as needles-train
scales them) plus a validation pass per epoch and the final val / test evaluation. Speed is taken
from the finished runs under the root (their summary.json's training images per second, times
the image's pixels: a pixel rate per model), else from --images_per_second (at 64 x 64).
A run with a stop rule (--stop_after_fit) is costed at its cap, the most it can take: the
estimate is an upper bound for those runs.
"""

from __future__ import annotations

import functools
import glob
import json
import os
import statistics
from typing import Any

from needles_tf import run_dir
from needles_tf.data import metadata
from needles_tf.experiments.definition import DatasetSpec, Run, read_flagfile
from needles_tf.experiments.plan import Plan
from needles_tf.training.schedule import REFERENCE_SIZE, scale_epochs

EVAL_COST = 1 / 3  # an evaluated image costs about a third of a trained one (no backward pass)
_DEFAULTS = {"epochs": 200, "lr_milestones": "80,120,160", "reference_size": REFERENCE_SIZE,
             "width_scale": 1.0, "receptive_field": 33, "blocks": "3,4,6,3", "stop_after_fit": 0,
             "class_balance": 0.5}


def run_flags(plan: Plan, run: Run) -> dict[str, Any]:
    """The needles-train flags a run gets (defaults, flagfile, definition, grid point)."""
    exp = plan.experiment
    flags: dict[str, Any] = dict(_DEFAULTS)
    if exp.train_flagfile:
        flags.update(read_flagfile(exp.train_flagfile))
    flags.update(dict(exp.train))
    flags.update(dict(run.settings))
    return flags


def split_sizes(plan: Plan, run: Run) -> tuple[dict[str, int], tuple[int, int]] | None:
    """({"train", "val", "test": images}, (height, width)) of a run's data; None while a
    dataset is not generated and cannot be counted beforehand."""
    flags = run_flags(plan, run)
    if run.dataset is None:  # noise: SIZE[xW[xC]]:COUNT
        size, count = str(flags["noise"]).split(":")
        dims = [int(d) for d in size.split("x")]
        evaluated = min(int(count), 512)
        return ({"train": int(count), "val": evaluated, "test": evaluated},
                (dims[0], dims[1] if len(dims) > 1 else dims[0]))
    if plan.dataset_ready(run.dataset):
        meta = metadata.read_metadata(plan.data_dir(run.dataset))
        sizes = {split: info["count"] for split, info in meta["splits"].items()}
        positives = meta["splits"]["train"].get("positives", sizes["train"] // 2)
        image = (meta["image"]["height"], meta["image"]["width"])
    else:
        counted = _nmnist_sizes(plan, plan.experiment.datasets[run.dataset])
        if counted is None:
            return None
        (sizes, image), positives = counted, counted[0]["train"] // 2  # half are positive
    balance = float(flags.get("class_balance", 0.5))
    if flags.get("train_size") or balance != positives / max(sizes["train"], 1):
        from needles_tf.input.order import selection_counts  # TensorFlow: only when needed

        size = min(int(flags["train_size"]), sizes["train"]) if flags.get("train_size") else None
        sizes["train"] = sum(selection_counts(positives, sizes["train"] - positives, size,
                                              balance))
    return sizes, image


# Threes per split of full MNIST (keras or the IDX files) as needles_tf splits it
FULL_MNIST_THREES = {"train": 5638, "val": 493, "test": 1010}


@functools.lru_cache(maxsize=None)
def _needles(source: str, digit: int) -> dict[str, int] | None:
    """Needle digits per split of an MNIST source (None: not known without downloading)."""
    if source == "keras":
        return FULL_MNIST_THREES if digit == 3 else None
    from needles_tf.generation import mnist

    try:
        data = mnist.load_mnist(source)
    except (mnist.MnistSourceError, OSError):
        return None
    return {split: int((data[split].labels == digit).sum()) for split in data.splits}


def _nmnist_sizes(plan: Plan, spec: DatasetSpec) -> tuple[dict[str, int], tuple[int, int]] | None:
    """An nMNIST dataset's split sizes before it is generated (2 x needles x duplicates): the
    needles counted in the embedded or IDX digits, known for full MNIST's 3s; None otherwise
    (nCAMELYON: its crops are found by reading the slides)."""
    if spec.generator != "nmnist":
        return None
    flags = {"canvas_size": 64, "mnist": "embedded", "needle_digit": 3, "duplicates": 2,
             "train_duplicates": 1}
    if spec.flagfile:
        flags.update(read_flagfile(spec.flagfile))
    flags.update(dict(spec.flags))
    flags.update(plan.data_flags.get("nmnist", {}))
    needles = _needles(str(flags["mnist"]), int(flags["needle_digit"]))
    if needles is None:
        return None
    duplicates = {"train": int(flags["train_duplicates"]), "val": int(flags["duplicates"]),
                  "test": int(flags["duplicates"])}
    canvas = int(flags["canvas_size"])
    return {s: 2 * needles[s] * duplicates[s] for s in duplicates}, (canvas, canvas)


def _listed(value: Any) -> str:
    return ",".join(str(v) for v in value) if isinstance(value, (list, tuple)) else str(value)


def _model_key(flags: dict[str, Any]) -> tuple:
    """(width scale, receptive field or k3, blocks): what sets a model's speed per pixel."""
    k3 = f"k3={_listed(flags['k3'])}" if flags.get("k3") else f"rf{flags['receptive_field']}"
    return float(flags["width_scale"]), k3, _listed(flags["blocks"]).replace(" ", "")


def measured_rates(root: str) -> dict[tuple, float]:
    """Training pixels per second by model (width, receptive field, blocks) from the finished
    runs under `root`."""
    rates: dict[tuple, list[float]] = {}
    for path in glob.glob(os.path.join(root, "runs", "**", "summary.json"), recursive=True):
        try:
            with open(path) as f:
                summary = json.load(f)
            config, data = summary["config"], summary["dataset"]
            speed = summary["train_images_per_second"] * data["height"] * data["width"]
        except (OSError, ValueError, KeyError, TypeError):
            continue
        flags = {**_DEFAULTS, **config}
        if config.get("receptive_field"):  # k3 is the preset's, resolved
            flags["k3"] = None
        rates.setdefault(_model_key(flags), []).append(speed)
    return {key: statistics.median(values) for key, values in rates.items()}


def estimate(plan: Plan, runs: list[Run], images_per_second: float | None = None
             ) -> dict[str, Any]:
    """{"images": images to process, "hours": at the measured rate or None, "unknown": runs
    whose data is not generated yet, "rate_from": where the speed came from, "may_stop_early":
    runs with a stop rule, counted at their epoch cap}."""
    rates = measured_rates(plan.root)
    fallback = images_per_second * 64 * 64 if images_per_second else (
        statistics.median(rates.values()) if rates else None)
    images, seconds, unknown, capped = 0, 0.0, 0, 0
    for run in runs:
        sizes = split_sizes(plan, run)
        if sizes is None:
            unknown += 1
            continue
        (counts, (height, width)), flags = sizes, run_flags(plan, run)
        milestones = [int(m) for m in _listed(flags["lr_milestones"]).split(",") if m]
        train_size = int(flags["train_size"]) if flags.get("train_size") else None
        epochs, _ = scale_epochs(int(flags["epochs"]), milestones, train_size,
                                 int(flags["reference_size"]))
        epochs -= min(run_dir.committed_epochs(plan.model_dir(run)), epochs)  # a resume's
        capped += int(flags["stop_after_fit"]) > 0
        trained = epochs * counts["train"]
        evaluated = epochs * counts["val"] + counts["val"] + counts["test"]
        images += trained + evaluated
        rate = rates.get(_model_key(flags), fallback)
        if rate:
            seconds += (trained + EVAL_COST * evaluated) * height * width / rate
    rate_from = ("finished runs" if rates else
                 "--images_per_second" if images_per_second else None)
    return {"images": images, "hours": seconds / 3600 if rate_from else None,
            "unknown": unknown, "rate_from": rate_from, "may_stop_early": capped}
