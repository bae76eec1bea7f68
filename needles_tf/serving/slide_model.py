"""A trained model as whole-slide prediction uses it: one tile at a time, with its resolution.

A slide is far larger than any image the model saw, so it is cut into tiles (models/tiles.py)
and each tile gives (a) the evidence of its exact embedding locations and (b) running pooling
statistics (models/streamed_pooling.py) of those among them that lie on tissue; merged over the
slide's tiles, they give the model's own pooling over the slide's tissue locations: its logits
and needle probability.

Two sources, one interface (`TileModel`):

* a run directory of needles-train: its best.keras through models/streaming.py's
  StreamedClassifier (the tile step compiled once with tf.function);
* a SavedModel of needles-export: its "tile_locations", "merge" and "finish" endpoints
  (serving/export.py), with no project model code.

The resolution the model reads at (microns per pixel): `--mpp` when given, else what the run
recorded from its dataset (dataset.json's `params.crop_mpp`, in summary.json, or via
config.json's data_dir); a SavedModel's own `mpp` collection (needles-export writes the run's),
else, inside a run directory (the default RUN/saved_model), its run's. Instance-normalised
models are refused (global per image: tiles cannot reproduce them).
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Callable

import numpy as np
import tensorflow as tf

from needles_tf import run_dir
from needles_tf.data import metadata
from needles_tf.serving.export import MPP_COLLECTION

State = list


class SlideModelError(ValueError):
    """A model that cannot predict slides; the message names the path and what would help."""


@dataclasses.dataclass
class TileModel:
    """One tile at a time: `tile(pixels, valid, locations)` -> (state of the exact locations
    at `locations`, int32 flat row-major indices; evidence [rows, cols] = class-1 minus class-0
    evidence of all the exact locations); `merge(a, b)`; `finish(state)` -> (needle
    probability, logits [2]). `file`: the model's file (best.keras or saved_model.pb)."""

    path: str
    file: str
    channels: int
    k3: tuple[int, ...]
    mpp: float
    tile: Callable[[np.ndarray, tuple[int, int, int, int], np.ndarray],
                   tuple[State, np.ndarray]]
    merge: Callable[[State, State], State]
    finish: Callable[[State], tuple[float, np.ndarray]]
    owner: Any = dataclasses.field(default=None, repr=False)  # holds the variables read


def _difference(evidence) -> np.ndarray:
    """[rows, cols, 2] -> class-1 minus class-0 evidence [rows, cols]."""
    evidence = np.asarray(evidence)
    return evidence[..., 1] - evidence[..., 0]


def _keras_functions(classifier) -> tuple[Callable, Callable, Callable]:
    from needles_tf.models import classifier_k3, needle_probability
    from needles_tf.models.streaming import StreamedClassifier
    from needles_tf.models.tiles import TileGeometry

    streamed = StreamedClassifier(classifier,
                                  TileGeometry(classifier_k3(classifier)).min_tile_size)

    @tf.function(reduce_retracing=True)
    def step(images, valid, locations):
        size = tf.shape(images)
        embedding = streamed.embedding(images, (0, size[1], valid[0], valid[1],
                                                0, size[2], valid[2], valid[3]))
        return streamed.tile_state(embedding, locations), streamed.head(embedding)

    def tile(pixels, valid, locations):
        state, evidence = step(tf.constant(pixels[None]), tf.constant(valid, tf.int32),
                               tf.constant(locations, tf.int32))
        return list(state), _difference(evidence[0])

    def finish(state):
        logits = streamed.logits(streamed.pooled(tuple(state)))
        return float(needle_probability(logits)[0]), np.asarray(logits)[0]

    return tile, lambda a, b: list(streamed.merge(tuple(a), tuple(b))), finish


def _saved_functions(loaded) -> tuple[Callable, Callable, Callable]:
    from needles_tf.serving.predict import saved_tile_functions

    tile_step, merge, finish = saved_tile_functions(loaded)

    def tile(pixels, valid, locations):
        state, evidence = tile_step(pixels, valid, locations)
        return state, _difference(evidence)

    return tile, merge, finish


def recorded_mpp(model_dir: str) -> float | None:
    """The microns per pixel of a run's training data (dataset.json's params.crop_mpp), from
    summary.json, else from config.json's dataset; None if neither says."""
    for name in (run_dir.SUMMARY, run_dir.CONFIG):
        path = os.path.join(model_dir, name)
        if not os.path.isfile(path):
            continue
        record = run_dir.read_json(path)
        params = (record.get("dataset") or {}).get("params")
        if params is None:
            config = record.get("config", record)
            data_dir = config.get("data_dir")
            if not data_dir or not os.path.isfile(os.path.join(data_dir, metadata.METADATA_FILE)):
                continue
            params = metadata.read_metadata(data_dir).get("params", {})
        if params.get("crop_mpp"):
            return float(params["crop_mpp"])
    return None


def load_tile_model(path: str, mpp: float | None = None) -> TileModel:
    """A run directory (best.keras) or SavedModel at `path` as a TileModel.

    Raises:
      SlideModelError: no model there, a model that cannot be streamed, or no resolution
        (recorded or `mpp`).
    """
    from needles_tf.models import classifier_k3

    saved_file = os.path.join(path, "saved_model.pb")
    saved = os.path.isfile(saved_file)
    try:
        if saved:
            from needles_tf.serving.predict import load_serving_model

            serving = load_serving_model(path)
            if serving.k3 is None or "tile_locations" not in serving.loaded.signatures:
                raise SlideModelError(f"{path}: this SavedModel has no tile endpoints that pool "
                                      "tissue locations only (a model with instance "
                                      "normalisation, or an older export); export it again "
                                      "with needles-export")
            channels, k3, functions = serving.channels, serving.k3, _saved_functions(
                serving.loaded)
            keep: Any = serving
            owner = os.path.dirname(os.path.abspath(path))
            collection = getattr(serving.loaded, MPP_COLLECTION, None)
            mpp = mpp or (float(collection[0].numpy()) if collection else None)
        else:
            classifier = run_dir.load_best_model(path)
            channels, k3 = classifier.input_shape[-1], classifier_k3(classifier)
            functions, keep, owner = _keras_functions(classifier), classifier, path
    except SlideModelError:
        raise
    except (run_dir.RunDirError, ValueError, OSError) as e:
        raise SlideModelError(f"{path}: {e}" if path not in str(e) else str(e)) from e
    found = mpp or recorded_mpp(owner)
    if not found:
        raise SlideModelError(f"{path}: the model's resolution is unknown (its training data "
                              "records no crop_mpp: nMNIST, or nCAMELYON made before "
                              "resolutions were recorded); pass --mpp=MICRONS_PER_PIXEL")
    return TileModel(path, saved_file if saved else os.path.join(path, run_dir.BEST_MODEL),
                     int(channels), tuple(k3), float(found), *functions, owner=keep)
