"""What slide prediction writes, per slide and for all slides, and how it is read back.

Per slide `<name>` in the output directory (every file written atomically; the record last):

  <name>.evidence.npy   float32 [h, w]: evidence for a needle (class-1 minus class-0 logit of
                        the linear head) at every embedding location on tissue; NaN off it.
                        Location (i, j) is centred on level-0 point (origin + j * downsample,
                        origin + i * downsample): origin = 1.5 x the model's pixel, downsample
                        = 8 x it (pixel 1 + 8 i at the model's resolution, its centre).
  <name>.heatmap.tif    that map in colour (red for, blue against a needle, white none; full
                        colour at the record's colour_limit) as a
                        tiled pyramidal TIFF, one pixel per location, with its resolution
                        (downsample x the slide's um per pixel): the slide's geometry at a
                        known downsample; openslide, QuPath and ASAP open it. A TIFF has no
                        sub-pixel origin: its pixel i spans level-0 [i d, (i + 1) d), centre
                        (i + 1/2) d with d = downsample, while location i is centred at
                        origin + i d = (8 i + 1.5) model pixels, 2.5 model pixels (5/16 of a
                        heatmap pixel) before that centre: drawn over the slide, the heatmap
                        sits about a third of one of its pixels right and down of the
                        evidence it shows. The .npy and GeoJSON use the exact centres.
  <name>.thumbnail.png  the slide at low resolution, the evidence for a needle in red over its
                        tissue.
  <name>.geojson        the regions whose evidence is above the threshold, as polygons in
                        level-0 pixels: QuPath imports them as annotations (File > Import
                        objects), ASAP via its GeoJSON import.
  <name>.json           the record: scores, geometry, settings (`read_records`).

and `slides.csv`, one row per slide (those that failed with their error), rewritten after each.
"""

from __future__ import annotations

import csv
import glob
import io
import json
import os
from typing import Any, Iterable, Mapping

import numpy as np

from needles_tf import atomic
from needles_tf.generation import pyramid_tiff

CSV_NAME = "slides.csv"
CSV_COLUMNS = ("slide", "path", "probability", "score", "logit_0", "logit_1", "tiles",
               "tissue_mm2", "mpp", "slide_mpp", "seconds", "error")
STRIP = 256  # map rows coloured at a time
THUMBNAIL = 1024  # the thumbnail's longer side, at most
COLORMAP = "RdBu_r"
BACKGROUND = 255  # no tissue: white


def path_of(out_dir: str, name: str, kind: str) -> str:
    """The output file of slide `name`: kind is evidence.npy, heatmap.tif, thumbnail.png,
    geojson or json."""
    return os.path.join(out_dir, f"{name}.{kind}")


def colour(evidence: np.ndarray, limit: float) -> np.ndarray:
    """uint8 RGB of evidence values: RdBu_r from -limit (blue) to +limit (red); NaN white."""
    import matplotlib

    values = np.asarray(evidence, np.float32)
    rgb = matplotlib.colormaps[COLORMAP](np.clip(values / limit, -1, 1) * 0.5 + 0.5,
                                         bytes=True)[..., :3]
    rgb[~np.isfinite(values)] = BACKGROUND
    return rgb


def evidence_limit(evidence: np.ndarray) -> float:
    """The largest |evidence| of a (memory-mapped) map, strip by strip; 1 when none."""
    limit = 0.0
    for y in range(0, evidence.shape[0], STRIP):
        strip = np.asarray(evidence[y:y + STRIP])
        finite = strip[np.isfinite(strip)]
        if finite.size:
            limit = max(limit, float(np.abs(finite).max()))
    return limit or 1.0


def write_heatmap_tiff(path: str, evidence: np.ndarray, mpp: float | None, scratch: str,
                       limit: float) -> None:
    """Writes the coloured pyramidal TIFF of a (memory-mapped) evidence map with `mpp` um per
    map pixel (colour full at +-`limit`), colouring strip by strip into a memory-mapped file
    in `scratch`."""
    rgb = np.lib.format.open_memmap(os.path.join(scratch, "heatmap_rgb.npy"), mode="w+",
                                    dtype=np.uint8, shape=(*evidence.shape, 3))
    for y in range(0, evidence.shape[0], STRIP):
        rgb[y:y + STRIP] = colour(evidence[y:y + STRIP], limit)
    pyramid_tiff.write_pyramidal_tiff(path, rgb, mpp=mpp, scratch=scratch)


def thumbnail_layers(low: np.ndarray, mask: np.ndarray, low_downsample: float,
                     evidence: np.ndarray, origin: float, step: float
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(image, tissue, heat) for `write_thumbnail`, at most THUMBNAIL pixels on a side, from
    the low-resolution image and tissue mask (`low_downsample` level-0 pixels per pixel): heat
    is the evidence of the location nearest each pixel's centre (NaN where none); origin and
    step place the locations in level-0 pixels."""
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


def write_thumbnail(path: str, image: np.ndarray, tissue: np.ndarray, heat: np.ndarray,
                    limit: float) -> None:
    """PNG of `image` (RGB uint8) with the evidence for a needle of `heat` (the evidence on its
    pixels, NaN none) in red over its `tissue`, more opaque up to `limit` (heatmaps.overlay);
    evidence against is not drawn, so a slide without evidence shows as it is."""
    from PIL import Image

    from needles_tf.heatmaps import overlay

    shown = np.where(tissue & np.isfinite(heat), np.maximum(heat, 0), 0.0)
    picture = overlay(image.astype(np.float32) / 255, shown, signed=False, limit=limit)
    buffer = io.BytesIO()
    Image.fromarray(picture).save(buffer, format="PNG")
    atomic.write_bytes(path, buffer.getvalue())


def regions_geojson(evidence: np.ndarray, threshold: float, downsample: float, origin: float,
                    size0: tuple[int, int], name: str) -> dict[str, Any]:
    """A GeoJSON FeatureCollection of the (4-connected) regions of locations whose evidence is
    above `threshold`: one Polygon per region, its outline half a location beyond the outer
    locations' centres and its holes as inner rings, in level-0 pixels (inside the slide of
    `size0` = (width, height)), with QuPath's annotation properties."""
    from scipy import ndimage
    from skimage import measure

    values = np.nan_to_num(np.asarray(evidence, np.float32), nan=-np.inf)
    labels, _ = ndimage.label(values > threshold)
    features = []
    for index, found in enumerate(ndimage.find_objects(labels), start=1):
        ys, xs = found
        region = np.pad(labels[found] == index, 1)
        rings = []
        for contour in measure.find_contours(region.astype(np.float32), 0.5):
            contour = measure.approximate_polygon(contour, 0.25)
            xy = np.column_stack([contour[:, 1] + xs.start - 1, contour[:, 0] + ys.start - 1])
            xy = np.clip(origin + xy * downsample, 0, size0)
            rings.append(np.round(xy, 1).tolist())
        if not rings:
            continue
        rings.sort(key=lambda ring: -_area(np.array(ring)))  # the outline first, then holes
        peak = float(values[found][labels[found] == index].max())
        features.append({
            "type": "Feature",
            "geometry": {"type": "Polygon", "coordinates": rings},
            "properties": {"objectType": "annotation", "name": f"{name} region {index}",
                           "classification": {"name": "Needle evidence",
                                              "color": [220, 40, 40]},
                           "measurements": {"max_evidence": peak,
                                            "locations": int((labels[found] == index).sum())}}})
    return {"type": "FeatureCollection", "features": features}


def _area(ring: np.ndarray) -> float:
    x, y = ring[:, 0], ring[:, 1]
    return abs(float(np.dot(x, np.roll(y, 1)) - np.dot(y, np.roll(x, 1)))) / 2


def read_records(out_dir: str) -> dict[str, dict[str, Any]]:
    """Every finished slide's record in `out_dir`, by slide name."""
    records = {}
    for path in sorted(glob.glob(os.path.join(glob.escape(out_dir), "*.json"))):
        try:
            with open(path) as f:
                record = json.load(f)
        except (OSError, ValueError):
            continue
        if isinstance(record, dict) and record.get("kind") == "needles_tf slide prediction":
            records[record["slide"]] = record
    return records


def load_evidence(out_dir: str, record: Mapping[str, Any]) -> np.ndarray:
    """The evidence map of a record (memory-mapped, read-only)."""
    return np.load(os.path.join(out_dir, record["evidence"]["file"]), mmap_mode="r")


def write_table(out_dir: str, rows: Iterable[Mapping[str, Any]]) -> str:
    """Writes slides.csv (CSV_COLUMNS, one row per slide) atomically; returns its path."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, CSV_COLUMNS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: ("" if row.get(k) is None else row[k]) for k in CSV_COLUMNS})
    path = os.path.join(out_dir, CSV_NAME)
    atomic.write_text(path, buffer.getvalue())
    return path
