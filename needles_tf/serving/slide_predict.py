"""Whole-slide prediction: a trained model over a slide's tissue, tile by tile, in bounded memory.

Per slide:

1. The slide is read at the model's resolution (serving/slide_model.py: the mpp its training
   data had) through generation/wsi.py: the pyramid level at or finer than it, resampled.
2. Tissue at low resolution (generation/tissue.py: Otsu on saturation), grown by one
   low-resolution pixel: an embedding location is on tissue when its centre (pixel
   EMBEDDING_OFFSET + EMBEDDING_STRIDE * i at the model's resolution) falls in it. The tiles of
   models/tiles.py with a tissue location are kept, so glass is never read.
3. Tiles are read by `readers` threads up to `prefetch` tiles ahead of the model (openslide
   and Pillow release the GIL, TensorFlow too), so reading overlaps computing. Each tile gives
   the evidence of its tissue locations (NaN elsewhere), written into a memory-mapped map, and
   the running pooling statistics of those locations only, merged (models/tiles.py's
   TileAccumulator): the slide's logits and needle probability are the model's own pooling
   over exactly the slide's tissue locations. Tile borders are exact (margins cover the
   receptive field), so neither score nor map depends on the tile size.
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
from needles_tf.models.tiles import Tile, TileAccumulator, TileGeometry
from needles_tf.serving import slide_outputs as outputs
from needles_tf.serving.images import fit_channels
from needles_tf.serving.slide_model import SlideModelError, TileModel

KIND = "needles_tf slide prediction"
SCRATCH = ".scratch-"

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class SlideSettings:
    """How slides are predicted.

    Attributes:
      tile_size: tile side in pixels at the model's resolution (memory and speed only: tile
        borders are exact and only tissue locations are pooled, so the results do not depend
        on it).
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
        """What a finished slide's results depend on (a rerun with others recomputes it): the
        model's path and file (size, mtime: a model retrained into the same run directory is
        another model), resolution and these settings but tile_size, which changes no result."""
        return {"model": os.path.abspath(model.path), "model_file": _file_key(model.file),
                "mpp": model.mpp, "threshold": self.threshold,
                "heatmap_limit": self.heatmap_limit, "assume_mpp": self.assume_mpp}


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


class _TissueLocations:
    """Which embedding locations of a slide lie on tissue: those whose centre falls in `mask`
    grown by one pixel (module docstring)."""

    def __init__(self, grid: wsi.Level, shape: tuple[int, int], mask: np.ndarray,
                 mask_downsample: float):
        from scipy import ndimage

        self.grown = ndimage.binary_dilation(mask, np.ones((3, 3), bool))
        step = EMBEDDING_STRIDE * grid.downsample
        origin = (EMBEDDING_OFFSET + 0.5) * grid.downsample  # level-0 coordinates

        def cells(locations: int, size: int) -> np.ndarray:
            centres = origin + np.arange(locations) * step
            return np.clip(np.floor(centres / mask_downsample).astype(int), 0, size - 1)

        self.rows, self.cols = (cells(n, size) for n, size in zip(shape, self.grown.shape))

    def of(self, tile: Tile) -> np.ndarray:
        """bool [rows, cols]: which of `tile`'s exact locations lie on tissue."""
        return self.grown[np.ix_(self.rows[tile.rows.first:tile.rows.last],
                                 self.cols[tile.cols.first:tile.cols.last])]


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
        tissue_at = _TissueLocations(grid, shape, mask, low_level.downsample)
        tiles = [tile for tile in TileGeometry(model.k3).iter_tiles(
            grid.height, grid.width, settings.tile_size) if tissue_at.of(tile).any()]
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

            done = TileAccumulator(model.merge, shape, evidence)
            loop_start, waited = time.time(), []
            bar = tqdm(total=len(tiles), desc=name, unit="tile", disable=not progress,
                       leave=False)
            with bar:
                for tile, pixels in _read_ahead(read, tiles, settings.readers,
                                                settings.prefetch, waited):
                    inside = tissue_at.of(tile)
                    part, local = model.tile(pixels, (*tile.rows.valid, *tile.cols.valid),
                                             np.flatnonzero(inside))
                    done.add(tile, part, np.where(inside, local, np.nan))
                    bar.update()
            probability, logits = model.finish(done.result()[0])
            tile_seconds = time.time() - loop_start
            evidence.flush()
            del evidence
        evidence = np.load(evidence_path, mmap_mode="r")
        heatmap_mpp = base_mpp * step if base_mpp else None
        limit = settings.heatmap_limit or outputs.evidence_limit(evidence)
        outputs.write_heatmap_tiff(outputs.path_of(out_dir, name, "heatmap.tif"), evidence,
                                   heatmap_mpp, scratch, limit)
        outputs.write_thumbnail(outputs.path_of(out_dir, name, "thumbnail.png"),
                                *outputs.thumbnail_layers(low, mask, low_level.downsample,
                                                          evidence, origin, step), limit)
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
