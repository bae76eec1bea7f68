"""Prediction with an exported SavedModel on image files: probabilities and evidence heatmaps.

Needs only TensorFlow and the SavedModel (see `export.py` for its signature), not the Keras
model or its code. Images are read by `images.read_image` (PNG, TIFF, NPY; any size) and
converted to the model's channel count by `images.fit_channels`.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from typing import Any, Callable, Iterable, Iterator

import numpy as np
import tensorflow as tf
from tqdm import tqdm

from needles_tf.heatmaps import write_heatmap
from needles_tf.models.tiles import TileAccumulator, TileGeometry
from needles_tf.serving.export import INPUT, K3_COLLECTION, MIN_SIZE_COLLECTION, SIGNATURE
from needles_tf.serving.images import ImageError, fit_channels, read_image

THRESHOLD = 0.5  # label 1 when the needle probability is above it (as in the metrics)
AUTO_TILE_PIXELS = 4096 * 4096  # larger images are streamed by default ...
AUTO_TILE = 1024  # ... in tiles of this size
PROGRESS_TILES = 16  # a progress bar from this many tiles on


class PredictError(ValueError):
    """A SavedModel or image that cannot be used; the message names the path and the problem."""


@dataclasses.dataclass(frozen=True)
class ServingModel:
    """A loaded serving SavedModel: its signature, channel count and minimum image size."""
    path: str
    loaded: Any  # the tf.saved_model.load object; owns the variables the signature reads
    channels: int
    min_size: int
    k3: tuple[int, ...] | None = None  # the tile geometry's, where the export streams

    @property
    def signature(self) -> Callable[..., dict[str, tf.Tensor]]:
        """The serving_default function: images=[N, H, W, C] -> probability, logits, ..."""
        return self.loaded.signatures[SIGNATURE]


def load_serving_model(path: str) -> ServingModel:
    """Loads a SavedModel written by `export_saved_model`; PredictError naming the path."""
    if not os.path.isfile(os.path.join(path, "saved_model.pb")):
        raise PredictError(f"{path}: not a SavedModel directory (no saved_model.pb); write one "
                           "with needles-export")
    try:
        loaded = tf.saved_model.load(path)
    except (OSError, ValueError, tf.errors.OpError) as e:
        raise PredictError(f"{path}: cannot load the SavedModel ({type(e).__name__})") from e
    if SIGNATURE not in loaded.signatures:
        raise PredictError(f"{path}: no {SIGNATURE!r} signature (has {list(loaded.signatures)})")
    signature = loaded.signatures[SIGNATURE]
    spec = signature.structured_input_signature[1].get(INPUT)
    if spec is None or spec.shape.rank != 4 or spec.shape[-1] is None:
        raise PredictError(f"{path}: {SIGNATURE!r} does not take {INPUT!r} [N, H, W, C] images")
    collection = getattr(loaded, MIN_SIZE_COLLECTION, None)
    min_size = int(collection[0].numpy()) if collection else 1
    k3 = getattr(loaded, K3_COLLECTION, None)
    return ServingModel(path, loaded, int(spec.shape[-1]), min_size,
                        tuple(int(n) for n in k3[0].numpy()) if k3 else None)


def predict_image(model: ServingModel, image: np.ndarray,
                  tile_size: int | None = None) -> tuple[float, np.ndarray]:
    """(needle probability, evidence map [h, w] = class-1 minus class-0 evidence) of one image.

    `image` is float32 [H, W, model.channels] in [0, 1] and at least `model.min_size` pixels high
    and wide (ValueError otherwise). tile_size: stream the image in tiles of that many pixels
    (the same results, a tile's memory); 0: whole; None: streamed in AUTO_TILE tiles above
    AUTO_TILE_PIXELS pixels, where the model allows it.
    """
    height, width = image.shape[:2]
    if min(height, width) < model.min_size:
        raise ValueError(f"image is {height} x {width} pixels; the model needs at least "
                         f"{model.min_size} x {model.min_size}")
    if tile_size is None and height * width > AUTO_TILE_PIXELS and model.k3 is not None:
        tile_size = AUTO_TILE
    if tile_size:
        probability, evidence = predict_streamed(model, image, tile_size)
    else:
        outputs = model.signature(**{INPUT: tf.constant(image[None], tf.float32)})
        probability, evidence = outputs["probability"][0], outputs["evidence_map"][0].numpy()
    return float(probability), evidence[..., 1] - evidence[..., 0]


def saved_tile_functions(loaded) -> tuple[Callable, Callable, Callable]:
    """(tile, merge, finish) over a SavedModel's tile endpoints (serving/export.py):

    tile(pixels [h, w, C], valid (4 ints), locations int32 [n] or None: pool all) -> (state,
    evidence_map [rows, cols, 2] as NumPy); merge(a, b) -> state; finish(state) ->
    (needle probability, logits [2] as NumPy). A state is a list of tensors.
    """
    signatures = loaded.signatures

    def states(out) -> list[tf.Tensor]:
        return [out[f"state_{i}"] for i in range(sum(k.startswith("state_") for k in out))]

    def tile(pixels, valid, locations=None):
        inputs = {INPUT: tf.constant(pixels[None], tf.float32),
                  "valid": tf.constant(valid, tf.int32)}
        if locations is None:
            out = signatures["tile"](**inputs)
        else:
            out = signatures["tile_locations"](**inputs,
                                               locations=tf.constant(locations, tf.int32))
        return states(out), out["evidence_map"][0].numpy()

    def merge(a, b):  # signatures take keywords only
        return states(signatures["merge"](**{f"a_{i}": v for i, v in enumerate(a)},
                                          **{f"b_{i}": v for i, v in enumerate(b)}))

    def finish(state):
        out = signatures["finish"](**{f"state_{i}": v for i, v in enumerate(state)})
        return float(out["probability"][0]), out["logits"].numpy()[0]

    return tile, merge, finish


def predict_streamed(model: ServingModel, image: np.ndarray,
                     tile_size: int) -> tuple[float, np.ndarray]:
    """(probability, evidence map [h, w, 2]) of one image through the export's tile endpoints
    (serving/export.py), the tiles cut by models/tiles.py; a progress bar on many tiles.

    Raises:
      PredictError: a model exported without them (instance norm, or an older export), or a
        tile below the receptive field.
    """
    check_tile_size(model, tile_size)
    tile_step, merge, finish = saved_tile_functions(model.loaded)
    tiles = TileGeometry(model.k3).tiles(image.shape[0], image.shape[1], tile_size)
    done = TileAccumulator(merge, (tiles[-1].rows.last, tiles[-1].cols.last))
    for tile in tqdm(tiles, desc="tiles", unit="tile", disable=len(tiles) < PROGRESS_TILES,
                     leave=False):
        pixels = image[tile.rows.start:tile.rows.stop, tile.cols.start:tile.cols.stop]
        done.add(tile, *tile_step(pixels, (*tile.rows.valid, *tile.cols.valid)))
    state, evidence = done.result()
    return finish(state)[0], evidence


def check_tile_size(model: ServingModel, tile_size: int | None) -> None:
    """Raises PredictError when images cannot be streamed through `model` in tiles of
    `tile_size` pixels (None or 0: whole images, always possible): once for a whole run,
    rather than once per file."""
    if not tile_size:
        return
    if model.k3 is None:
        raise PredictError(f"{model.path} cannot stream tiles (a model with instance "
                           "normalisation, or exported before tiles existed); use --tile_size=0")
    minimum = TileGeometry(model.k3).min_tile_size
    if tile_size < minimum:
        raise PredictError(f"tile size {tile_size} is too small for the receptive field of "
                           f"{model.path}: give --tile_size of at least {minimum} (0: whole "
                           "images)")


def predict_file(model: ServingModel, path: str, heatmap_path: str | None = None,
                 tile_size: int | None = None,
                 max_pixels: int | None = None) -> dict[str, Any]:
    """{file, probability, label, height, width[, heatmap]} for one image file.

    With `heatmap_path`, also writes the evidence heatmap PNG there and the raw evidence map
    [h, w] beside it as .npy (record keys "heatmap", "evidence_map").
    Raises PredictError naming the file when it cannot be read or does not fit the model.
    """
    try:
        image = fit_channels(read_image(path, max_pixels), model.channels, path)
        probability, evidence = predict_image(model, image, tile_size)
    except ImageError as e:
        raise PredictError(str(e)) from e
    except ValueError as e:
        raise PredictError(f"{path}: {e}") from e
    except tf.errors.OpError as e:  # e.g. out of memory on a huge image
        raise PredictError(f"{path}: inference failed ({type(e).__name__}: "
                           f"{_cause(e.message or '')})") from e
    record = {"file": path, "probability": probability, "label": int(probability > THRESHOLD),
              "height": int(image.shape[0]), "width": int(image.shape[1])}
    if heatmap_path:
        record["evidence_map"] = write_heatmap(heatmap_path, image, evidence, probability)
        record["heatmap"] = heatmap_path
    return record


def _heatmap_names(paths: Iterable[str]) -> Iterator[str]:
    """`<file name>.heatmap.png`, numbered when two files share a name."""
    seen: dict[str, int] = {}
    for path in paths:
        name = os.path.basename(path)
        count = seen.get(name, 0)
        seen[name] = count + 1
        yield f"{name}.heatmap.png" if count == 0 else f"{name}.{count}.heatmap.png"


def predict_files(model: ServingModel, paths: Iterable[str], heatmap_dir: str | None = None,
                  strict: bool = False,
                  on_error: Callable[[str, str], None] | None = None,
                  tile_size: int | None = None,
                  max_pixels: int | None = None) -> Iterator[dict[str, Any]]:
    """Yields `predict_file` records in order, as each file is done (tile_size, max_pixels:
    `predict_file`'s).

    A file that cannot be used raises PredictError with `strict`; otherwise it is reported
    (`on_error(path, message)`, default: a logged warning) and skipped. A tile size the model
    cannot use raises PredictError before any file (`check_tile_size`).
    """
    check_tile_size(model, tile_size)
    paths = list(paths)
    if heatmap_dir:
        os.makedirs(heatmap_dir, exist_ok=True)
    report = on_error or (lambda path, message: logging.warning("skipped %s", message))
    names = _heatmap_names(paths) if heatmap_dir else (None for _ in paths)
    for path, name in zip(paths, names):
        try:
            yield predict_file(model, path, name and os.path.join(heatmap_dir, name),
                               tile_size, max_pixels)
        except PredictError as e:
            if strict:
                raise
            report(path, str(e))


def _cause(message: str) -> str:
    """The line of a TensorFlow error that says what went wrong: a graph's error opens with
    "Graph execution error:" and the node's stack, and says why further down."""
    noise = ("Graph execution error", "Detected at node", "<stack traces unavailable>")
    lines = [line.strip() for line in message.splitlines()
             if line.strip() and not line.startswith(("\t", " ", "File ")) and
             not line.startswith(noise)]
    return lines[0] if lines else message.strip()
