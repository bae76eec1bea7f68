"""Whole-slide prediction: a trained model over a slide's tissue, tile by tile, in bounded memory.

Per slide:

1. The slide is read at the model's resolution (serving/slide_model.py: the mpp its training
   data had) through generation/wsi.py: the pyramid level at or finer than it, resampled.
2. Tissue at low resolution (generation/tissue.py: Otsu on saturation); the tiles of
   models/tiles.py over the whole slide are kept where their exact locations' centres meet the
   tissue (grown by one low-resolution pixel), so glass is never read.
3. Tiles are read by `readers` threads up to `prefetch` tiles ahead of the model (openslide
   and Pillow release the GIL, TensorFlow too), so reading overlaps computing. Each tile gives
   its exact locations' evidence, written into a memory-mapped map, and running pooling
   statistics, merged: the model's own pooling over every location of the tissue tiles gives
   the slide's logits and needle probability. Tile borders are exact (margins cover the
   receptive field), so the map equals what one whole-image pass over those tiles would give.
4. Outputs (serving/slide_outputs.py): evidence map, pyramidal heatmap TIFF, thumbnail,
   GeoJSON regions, the record (written last: a slide with a record is finished).

Memory: the model, `prefetch` + 1 tiles, the low-resolution image (16 um per pixel) and the
evidence map's region labelling at the end (one value per location: 1/64 of the slide's pixels
at the model's resolution); everything larger is memory-mapped or written tile by tile.

Many slides (`predict_slides`): finished slides (a record with the same settings and files)
are skipped, so Ctrl-C or a kill and the same command resume slide by slide; partial files of
an interrupted slide are temporaries, removed on the next start. A slide that cannot be read
(no resolution, scanned coarser than the model, no tissue, unreadable) is reported and skipped
(`strict` raises); slides.csv lists every slide, failed ones with their error.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import logging
import math
import os
import re
import shutil
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Iterable, Iterator

import numpy as np

from needles_tf import atomic
from needles_tf.generation import tissue, wsi
from needles_tf.generation.camelyon import slide_name
from needles_tf.models.bagnet import EMBEDDING_OFFSET, EMBEDDING_STRIDE, embedding_size
from needles_tf.models.tiles import Tile, TileGeometry
from needles_tf.serving import slide_outputs as outputs
from needles_tf.serving.images import fit_channels
from needles_tf.serving.slide_model import SlideModelError, TileModel

KIND = "needles_tf slide prediction"
THUMBNAIL = 1024  # the thumbnail's longer side, at most
SCRATCH = ".scratch-"
SLIDE_SUFFIXES = (".svs", ".tif", ".tiff", ".ndpi", ".vms", ".vmu", ".scn", ".mrxs",
                  ".svslide", ".bif")

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class SlideSettings:
    """How slides are predicted.

    Attributes:
      tile_size: tile side in pixels at the model's resolution (memory and speed; not the
        results, which are exact at tile borders).
      threshold: GeoJSON regions are the locations whose evidence is above it (logit units).
      heatmap_limit: evidence drawn in full colour in heatmap and thumbnail (default: each
        slide's largest |evidence|; give one to compare slides by eye).
      readers: threads reading tiles; prefetch: tiles read ahead of the model.
      assume_mpp: level-0 um per pixel of slides that record none (else they are skipped).
    """

    tile_size: int = 1024
    threshold: float = 0.0
    heatmap_limit: float | None = None
    readers: int = 2
    prefetch: int = 4
    assume_mpp: float | None = None

    def key(self, model: TileModel) -> dict[str, Any]:
        """What a finished slide's results depend on (a rerun with others recomputes it)."""
        return {"model": os.path.abspath(model.path), "mpp": model.mpp,
                "threshold": self.threshold, "heatmap_limit": self.heatmap_limit,
                "assume_mpp": self.assume_mpp}


def _read_ahead(read: Callable[[Tile], np.ndarray], tiles: Iterable[Tile], readers: int,
                depth: int, waited: list[float]) -> Iterator[tuple[Tile, np.ndarray]]:
    """(tile, pixels) in order, read by `readers` threads at most `depth` tiles ahead;
    `waited` gets the seconds the consumer waited for each tile (0: reading kept ahead)."""

    def take(pending: collections.deque) -> tuple[Tile, np.ndarray]:
        tile, future = pending.popleft()
        start = time.perf_counter()
        pixels = future.result()
        waited.append(time.perf_counter() - start)
        return tile, pixels

    with ThreadPoolExecutor(readers, thread_name_prefix="slide-reader") as pool:
        pending: collections.deque = collections.deque()
        try:
            for tile in tiles:
                pending.append((tile, pool.submit(read, tile)))
                if len(pending) > depth:
                    yield take(pending)
            while pending:
                yield take(pending)
        finally:
            for _, future in pending:
                future.cancel()


def _tissue_tiles(geometry: TileGeometry, grid: wsi.Level, tile_size: int, mask: np.ndarray,
                  mask_downsample: float) -> list[Tile]:
    """The tiles whose exact locations' centres (level-0 bounding box) meet `mask` grown by
    one pixel."""
    from scipy import ndimage

    grown = ndimage.binary_dilation(mask, np.ones((3, 3), bool))
    step = EMBEDDING_STRIDE * grid.downsample
    origin = (EMBEDDING_OFFSET + 0.5) * grid.downsample

    def cells(first: int, last: int, size: int) -> slice:
        lo = math.floor((origin + first * step) / mask_downsample)
        hi = math.floor((origin + (last - 1) * step) / mask_downsample)
        return slice(min(max(lo, 0), size - 1), min(max(hi, 0), size - 1) + 1)

    return [tile for tile in geometry.iter_tiles(grid.height, grid.width, tile_size)
            if grown[cells(tile.rows.first, tile.rows.last, grown.shape[0]),
                     cells(tile.cols.first, tile.cols.last, grown.shape[1])].any()]


def _thumbnail(low: np.ndarray, mask: np.ndarray, low_downsample: float, evidence: np.ndarray,
               origin: float, step: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(image, tissue, heat) at most THUMBNAIL pixels on a side: the evidence of the location
    nearest each pixel's centre (NaN where none)."""
    from PIL import Image

    scale = max(1.0, max(low.shape[:2]) / THUMBNAIL)
    size = (max(1, round(low.shape[1] / scale)), max(1, round(low.shape[0] / scale)))
    image = np.asarray(Image.fromarray(low).resize(size, Image.Resampling.LANCZOS))
    tissue_small = np.asarray(Image.fromarray(mask).resize(size, Image.Resampling.NEAREST))
    downsample = low_downsample * low.shape[1] / size[0]  # level-0 pixels per thumbnail pixel

    def nearest(count: int, locations: int) -> np.ndarray:
        centres = (np.arange(count) + 0.5) * downsample
        return np.clip(np.rint((centres - origin) / step), 0, locations - 1).astype(int)

    rows, cols = nearest(size[1], evidence.shape[0]), nearest(size[0], evidence.shape[1])
    heat = np.asarray(evidence[rows][:, cols], np.float32)
    return image, tissue_small, heat


def predict_slide(model: TileModel, path: str, out_dir: str,
                  settings: SlideSettings = SlideSettings(), progress: bool = True
                  ) -> dict[str, Any]:
    """Predicts one slide and writes its outputs into `out_dir`; returns its record.

    Raises:
      wsi.SlideError: the slide cannot be read at the model's resolution, or has no tissue.
    """
    from tqdm.auto import tqdm

    name, start = slide_name(path), time.time()
    slide = wsi.open_slide(path)
    with contextlib.closing(slide), tempfile.TemporaryDirectory(
            dir=out_dir, prefix=f"{SCRATCH}{os.getpid()}-") as scratch:
        grid = wsi.level_at_mpp(slide, model.mpp, path, settings.assume_mpp)
        base_mpp = wsi.slide_mpp(slide, path, settings.assume_mpp)
        low, low_level = tissue.low_resolution(slide, path, assume_mpp=settings.assume_mpp)
        mask = tissue.tissue_mask(low, low_level.mpp)
        shape = (embedding_size(grid.height), embedding_size(grid.width))
        if min(shape) < 1:
            raise wsi.SlideError(f"{path}: {grid.width} x {grid.height} pixels at {model.mpp} "
                                 "um are too few for the model")
        tiles = _tissue_tiles(TileGeometry(model.k3), grid, settings.tile_size, mask,
                              low_level.downsample)
        if not tiles:
            raise wsi.SlideError(f"{path}: no tissue found (saturation rule of "
                                 "generation/tissue.py); nothing to predict")
        step = EMBEDDING_STRIDE * grid.downsample
        origin = (EMBEDDING_OFFSET + 0.5) * grid.downsample
        evidence_path = outputs.path_of(out_dir, name, "evidence.npy")
        with atomic.atomic_path(evidence_path) as tmp:
            evidence = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=shape)
            for y in range(0, shape[0], outputs.STRIP):
                evidence[y:y + outputs.STRIP] = np.nan

            def read(tile: Tile) -> np.ndarray:
                pixels = wsi.read_region(slide, grid, tile.cols.start, tile.rows.start,
                                         tile.cols.size, tile.rows.size, path)
                return fit_channels(pixels.astype(np.float32) / 255, model.channels, path)

            state, loop_start, waited = None, time.time(), []
            bar = tqdm(total=len(tiles), desc=name, unit="tile", disable=not progress,
                       leave=False)
            with bar:
                for tile, pixels in _read_ahead(read, tiles, settings.readers,
                                                settings.prefetch, waited):
                    part, local = model.tile(pixels, (*tile.rows.valid, *tile.cols.valid))
                    state = part if state is None else model.merge(state, part)
                    evidence[tile.rows.first:tile.rows.last,
                             tile.cols.first:tile.cols.last] = local
                    bar.update()
            probability, logits = model.finish(state)
            tile_seconds = time.time() - loop_start
            evidence.flush()
            del evidence
        evidence = np.load(evidence_path, mmap_mode="r")
        heatmap_mpp = base_mpp * step if base_mpp else None
        limit = settings.heatmap_limit or outputs.evidence_limit(evidence)
        outputs.write_heatmap_tiff(outputs.path_of(out_dir, name, "heatmap.tif"), evidence,
                                   heatmap_mpp, scratch, limit)
        outputs.write_thumbnail(outputs.path_of(out_dir, name, "thumbnail.png"),
                                *_thumbnail(low, mask, low_level.downsample, evidence, origin,
                                            step), limit)
        regions = outputs.regions_geojson(evidence, settings.threshold, step, origin,
                                          slide.dimensions, name)
        atomic.write_json(outputs.path_of(out_dir, name, "geojson"), regions)
    record = {
        "kind": KIND, "slide": name, "path": os.path.abspath(path), "file": _file_key(path),
        "probability": probability, "score": float(logits[1] - logits[0]),
        "logit_0": float(logits[0]), "logit_1": float(logits[1]),
        "settings": settings.key(model), "mpp": grid.mpp, "slide_mpp": base_mpp,
        "width0": grid.width0, "height0": grid.height0,
        "grid": {"level": grid.index, "width": grid.width, "height": grid.height,
                 "downsample": grid.downsample},
        "evidence": {"file": os.path.basename(evidence_path), "downsample": step,
                     "origin": origin, "height": shape[0], "width": shape[1],
                     "colour_limit": limit},
        "heatmap": f"{name}.heatmap.tif", "heatmap_mpp": heatmap_mpp,
        "thumbnail": f"{name}.thumbnail.png", "geojson": f"{name}.geojson",
        "regions": len(regions["features"]), "tiles": len(tiles),
        "tile_size": settings.tile_size,
        "tissue_mm2": float(mask.sum() * low_level.mpp ** 2 / 1e6),
        "seconds": round(time.time() - start, 2),
        "tile_seconds": round(tile_seconds, 2),
        "read_wait_seconds": round(sum(waited), 2),  # the model waiting for the readers
        "tiles_per_second": round(len(tiles) / tile_seconds, 2)}
    atomic.write_json(outputs.path_of(out_dir, name, "json"), record)
    return record


def _file_key(path: str) -> list[int]:
    """The slide file's size and modification time: a changed file is predicted again."""
    stat = os.stat(path)
    return [stat.st_size, stat.st_mtime_ns]


def _finished(record: dict[str, Any] | None, path: str, key: dict[str, Any],
              out_dir: str) -> bool:
    if (not record or record.get("path") != os.path.abspath(path) or record["settings"] != key
            or record.get("file") != _file_key(path)):
        return False
    files = (record["evidence"]["file"], record["heatmap"], record["thumbnail"],
             record["geojson"])
    return all(os.path.isfile(os.path.join(out_dir, f)) for f in files)


def _remove_stale_scratch(out_dir: str) -> None:
    """Scratch folders of killed runs (their process is gone) and their temporaries."""
    atomic.remove_stale_temporaries(out_dir)
    for entry in os.listdir(out_dir):
        found = re.match(re.escape(SCRATCH) + r"(\d+)-", entry)
        if found and not atomic.process_alive(int(found.group(1))):
            shutil.rmtree(os.path.join(out_dir, entry), ignore_errors=True)


def find_slides(inputs: Iterable[str]) -> list[str]:
    """Slide files from files and directories (searched recursively for SLIDE_SUFFIXES).

    Raises:
      wsi.SlideError: an input that does not exist, or two slides with the same name (their
        outputs would collide).
    """
    found = []
    for item in inputs:
        if os.path.isdir(item):
            for root, dirs, files in os.walk(item):
                dirs.sort()
                found += [os.path.join(root, f) for f in sorted(files)
                          if f.lower().endswith(SLIDE_SUFFIXES)]
        elif os.path.isfile(item):
            found.append(item)
        else:
            raise wsi.SlideError(f"{item}: no such file or directory")
    names: dict[str, str] = {}
    for path in found:
        other = names.setdefault(slide_name(path), path)
        if other != path:
            raise wsi.SlideError(f"{path}: a second slide named {slide_name(path)!r} (also "
                                 f"{other}); outputs are named by slide, so names must differ")
    return found


def predict_slides(model: TileModel, paths: Iterable[str], out_dir: str,
                   settings: SlideSettings = SlideSettings(), strict: bool = False,
                   progress: bool = True,
                   on_error: Callable[[str, str], None] | None = None,
                   on_done: Callable[[dict[str, Any], bool], None] | None = None
                   ) -> list[dict[str, Any]]:
    """Predicts every slide not finished yet (module docstring); returns slides.csv's rows.

    on_error(path, message): a skipped slide (default: a logged warning); on_done(record,
    skipped): a finished one (skipped: done by an earlier run).

    Raises:
      SlideModelError: a tile size below what the model's receptive field needs (before any
        slide).
    """
    minimum = TileGeometry(model.k3).min_tile_size
    if settings.tile_size < minimum:
        raise SlideModelError(f"{model.path}: tiles of {settings.tile_size} pixels are too small "
                              f"for its receptive field; give --tile_size of at least {minimum}")
    os.makedirs(out_dir, exist_ok=True)
    _remove_stale_scratch(out_dir)
    report = on_error or (lambda path, message: log.warning("skipped %s", message))
    finished = outputs.read_records(out_dir)
    key, rows = settings.key(model), []
    for path in paths:
        record = finished.get(slide_name(path))
        if _finished(record, path, key, out_dir):
            rows.append(record)
            if on_done:
                on_done(record, True)
            continue
        try:
            record = predict_slide(model, path, out_dir, settings, progress)
        except wsi.SlideError as e:
            if strict:
                raise
            report(path, str(e))
            rows.append({"slide": slide_name(path), "path": os.path.abspath(path),
                         "error": str(e)})
        else:
            rows.append(record)
            if on_done:
                on_done(record, False)
        outputs.write_table(out_dir, rows)
    return rows
