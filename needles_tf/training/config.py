"""The settings of a training run (the needles-train flags) and the classifier they describe."""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Sequence

import keras

from needles_tf.models import build_classifier, min_input_size
from needles_tf.models.bagnet import STAGE_BLOCKS, resolve_k3
from needles_tf.training.schedule import REFERENCE_SIZE


class TrainingError(RuntimeError):
    """A run that cannot start or continue; the message says why and what to do."""


@dataclasses.dataclass
class TrainConfig:
    """Every knob of a run (the needles-train flags)."""

    data_dir: str | None
    model_dir: str
    receptive_field: int | None = 33
    k3: Sequence[int] | None = None
    blocks: Sequence[int] = STAGE_BLOCKS
    width_scale: float = 1.0
    pooling: str = "max"
    normalization: bool = True
    epochs: int = 200  # the cap, with a stop rule
    stop_after_fit: int = 0  # stop once training accuracy held 99 % this many epochs (0: off)
    batch_size: int = 32
    micro_batch_size: int | str | None = None  # "auto": the largest that fits (recorded)
    learning_rate: float = 5e-5
    lr_milestones: Sequence[int] = (80, 120, 160)
    lr_decay: float = 0.1
    optimizer: str = "rmsprop"
    train_size: int | None = None
    reference_size: int = REFERENCE_SIZE
    class_balance: float | None = 0.5
    seed: int = 0
    precision: str = "auto"
    strategy: str = "auto"
    jit_compile: str = "auto"
    cache: str = "auto"
    deterministic: bool = False
    log_images: int = 8
    init_from: str | None = None
    remat: str = "none"
    tile_size: int | None = None  # stream images in tiles of this many pixels (training/streamed)
    noise: str | None = None  # instead of data_dir: Gaussian noise, "SIZE:COUNT" (input/noise.py)
    score_detection: bool = False  # also score the best model as a detector (test split)

    def to_json(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["k3"] = list(resolve_k3(self.receptive_field if self.k3 is None else None, self.k3))
        d["blocks"] = list(self.blocks)
        d["lr_milestones"] = list(self.lr_milestones)
        d["data_dir"] = self.data_dir and os.path.abspath(self.data_dir)
        d["model_dir"] = os.path.abspath(self.model_dir)
        d["init_from"] = self.init_from and os.path.abspath(self.init_from)
        return d


# How a run is carried out, not what it computes: a resume may change them (e.g. --cache=none
# after an out-of-memory kill).
# score_detection adds scores to the summary and changes no training.
RUNTIME_SETTINGS = ("cache", "log_images", "remat", "score_detection", "tile_size")


def build_model(config: TrainConfig, channels: int) -> keras.Model:
    return build_classifier(channels, config.receptive_field, config.k3, config.width_scale,
                            config.pooling, normalization=config.normalization,
                            blocks=config.blocks)


def check_input_size(info: dict, config: TrainConfig) -> None:
    k3 = resolve_k3(config.receptive_field if config.k3 is None else None, config.k3)
    smallest = min_input_size(k3)
    if info["height"] and min(info["height"], info["width"]) < smallest:
        source = config.data_dir or f"noise {config.noise}"
        raise ValueError(f"{source}: images of {info['height']}x{info['width']} are "
                         f"smaller than the model's minimum input size {smallest} (k3={k3})")
