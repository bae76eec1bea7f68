"""Synthetic CAMELYON-style whole-slide images for tests, benchmarks and the offline demo.

`make_synthetic_slides` writes a tree laid out like CAMELYON17::

    out/center_K/patient_XXX_node_Y.tif      pyramidal tiled TIFF (openslide's generic-tiff)
    out/lesion_annotations/patient_XXX_node_Y.xml   ASAP XML, only for slides with lesions

Patient i (0-based) is patient number 20 * (i % 5) + i // 5, so CAMELYON17's rule
centre = patient // 20 spreads the patients over centres 0..4 (centre 3 = validation, 4 = test).
Within a centre, every other patient (the 1st, 3rd, ...) has lesions, the others none, so
10 patients give each centre one slide with and one without lesions.

A slide is white background (RGB about 240) with tissue blobs of a pink, finely dotted texture
(mean green about 150) and, in lesion slides, irregular polygonal lesions of a purple texture with
coarser nuclei. Lesion radii are log-uniform between `size / 200` and `size / 8` level-0 pixels,
so at pyramid level 3 and 64-pixel crops every O2I bin of nCAMELYON gets lesions. Pyramid levels
halve the size (2x2 mean), one tiled zlib-compressed TIFF page each (pyramid_tiff.py); openslide
reports downsamples 1, 2, 4, ... and the scanner's resolution (`openslide.mpp-x`, 0.25 um per
pixel by default, a 40x scan). Everything is deterministic in `seed`.

A mixed cohort: `scanner_mpp=(0.25, 0.4)` scans every other patient with a second scanner of
coarser base resolution: the slide is rendered at 0.25 um and resampled to 0.4 (its lesions
scaled alike), so the same tissue comes at a different pixel scale, as from another make of
scanner. `None` among them writes slides without resolution metadata.

`xml_style="camelyon16"` writes CAMELYON16's groups instead of `metastases`: lesions alternate
between `_0` and `_1`, and the largest lesion of a slide gets a `_2` exclusion polygon (a hole of
normal tissue) that the extraction must subtract.
"""

from __future__ import annotations

import dataclasses
import os
import xml.etree.ElementTree as ET
from typing import Sequence

import numpy as np

from needles_tf import atomic
from needles_tf.generation import camelyon, pyramid_tiff

NUM_CENTERS = 5
# Palette of the rendered classes: background, tissue, tissue nucleus, lesion, lesion nucleus.
PALETTE = np.array([[242, 242, 244], [228, 160, 196], [120, 70, 150], [186, 112, 186],
                    [72, 30, 110]], np.uint8)
BACKGROUND, TISSUE, TISSUE_NUCLEUS, LESION, LESION_NUCLEUS = range(5)
DEFAULT_MPP = 0.25  # level-0 microns per pixel: a 40x scanner (CAMELYON's are 0.23-0.25)


@dataclasses.dataclass(frozen=True)
class SyntheticLesion:
    """One lesion polygon (level-0 x, y vertices) and its group; `hole` is a `_2` exclusion."""

    points: np.ndarray
    group: str
    hole: np.ndarray | None = None


def patient_number(index: int) -> int:
    """CAMELYON17 patient number of the index-th synthetic patient (spread over 5 centres)."""
    return camelyon.PATIENTS_PER_CENTER * (index % NUM_CENTERS) + index // NUM_CENTERS


def _blob(rng: np.random.Generator, cx: float, cy: float, radius: float) -> np.ndarray:
    """Irregular closed polygon around (cx, cy): radius modulated by a few random harmonics."""
    n = int(np.clip(radius / 2, 16, 64))
    angles = np.linspace(0, 2 * np.pi, n, endpoint=False)
    r = np.ones(n)
    for k in (2, 3, 5):
        r += rng.uniform(0, 0.35 / k * 2) * np.cos(k * angles + rng.uniform(0, 2 * np.pi))
    r = radius * r / r.max()
    return np.stack([cx + r * np.cos(angles), cy + r * np.sin(angles)], axis=1)


def _fill(points: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Boolean mask (level 0) of a polygon given as x, y vertices."""
    from PIL import Image, ImageDraw

    canvas = Image.new("L", (shape[1], shape[0]), 0)
    ImageDraw.Draw(canvas).polygon([tuple(p) for p in points], fill=1)
    return np.asarray(canvas, bool)


def _upsample(a: np.ndarray, factor: int, shape: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour upsampling by an integer factor, cut to `shape`."""
    return np.repeat(np.repeat(a, factor, 0), factor, 1)[:shape[0], :shape[1]]


def _tissue_mask(rng: np.random.Generator, size: int) -> np.ndarray:
    """Smooth random tissue blobs covering roughly half of the slide."""
    from scipy import ndimage

    coarse = rng.standard_normal((16, 16)).astype(np.float32)
    coarse = ndimage.gaussian_filter(coarse, 2.0, mode="constant")
    # Fade towards the borders, as tissue sits in the middle of a glass slide.
    ramp = np.minimum.outer(*[np.minimum(np.arange(16), np.arange(16)[::-1]) / 4.0] * 2)
    coarse = coarse * np.minimum(1.0, ramp) + 0.3 * ramp.clip(0, 1)
    field = ndimage.zoom(coarse, size / 64, order=1)  # 1/4 resolution, 4-pixel steps
    return _upsample(field > np.quantile(field, 0.5), 4, (size, size))


def _dots(rng: np.random.Generator, shape: tuple[int, int], sigma: float,
          fraction: float) -> np.ndarray:
    """Boolean dot texture ("nuclei"): the top `fraction` of smoothed noise made at half
    resolution."""
    from scipy import ndimage

    half = (-(-shape[0] // 2), -(-shape[1] // 2))
    noise = ndimage.gaussian_filter(rng.standard_normal(half).astype(np.float32), sigma / 2)
    dots = noise > np.quantile(noise[::4, ::4], 1 - fraction)
    return _upsample(dots, 2, shape)


def _place_lesions(rng: np.random.Generator, tissue: np.ndarray, count: int,
                   style: str) -> list[SyntheticLesion]:
    """Non-touching lesions centred in tissue, away from the slide border."""
    size = tissue.shape[0]
    gap = size / 64  # keeps neighbours apart at pyramid level 3 and above
    lesions, placed = [], []  # placed: (cx, cy, radius)
    for _ in range(50 * count):
        if len(lesions) == count:
            break
        radius = float(np.exp(rng.uniform(np.log(size / 200), np.log(size / 8))))
        cx, cy = rng.uniform(radius + gap, size - radius - gap, 2)
        if not tissue[int(cy), int(cx)]:
            continue
        if any(np.hypot(cx - x, cy - y) < radius + r + gap for x, y, r in placed):
            continue
        placed.append((cx, cy, radius))
        group = "metastases" if style == "camelyon17" else f"_{len(lesions) % 2}"
        lesions.append(SyntheticLesion(_blob(rng, cx, cy, radius), group))
    if style == "camelyon16" and lesions:
        big = int(np.argmax([r for _, _, r in placed]))
        cx, cy, r = placed[big]
        lesions[big] = dataclasses.replace(lesions[big], hole=_blob(rng, cx, cy, 0.35 * r))
    return lesions


def render_slide(rng: np.random.Generator, size: int, lesions_range: tuple[int, int] | None,
                 xml_style: str = "camelyon17") -> tuple[np.ndarray, list[SyntheticLesion]]:
    """Level-0 RGB image (size x size, uint8) and its lesions (none when `lesions_range` is
    None)."""
    tissue = _tissue_mask(rng, size)
    classes = np.where(tissue, np.uint8(TISSUE), np.uint8(BACKGROUND))
    classes[tissue & _dots(rng, (size, size), sigma=1.5, fraction=0.12)] = TISSUE_NUCLEUS
    lesions = []
    if lesions_range is not None:
        lesions = _place_lesions(rng, tissue, int(rng.integers(*lesions_range, endpoint=True)),
                                 xml_style)
        _paint_lesions(rng, classes, lesions)
    return PALETTE[classes], lesions


def _paint_lesions(rng: np.random.Generator, classes: np.ndarray,
                   lesions: Sequence[SyntheticLesion]) -> None:
    """Marks each lesion (minus its hole) with the lesion texture in the class map, in place."""
    for lesion in lesions:
        x0, y0 = np.floor(lesion.points.min(0)).astype(int).clip(0)
        x1, y1 = np.ceil(lesion.points.max(0)).astype(int) + 1
        box = classes[y0:y1, x0:x1]
        inside = _fill(lesion.points - (x0, y0), box.shape)
        if lesion.hole is not None:
            inside &= ~_fill(lesion.hole - (x0, y0), box.shape)
        nuclei = _dots(rng, box.shape, sigma=3.0, fraction=0.3)
        box[inside] = np.where(nuclei, np.uint8(LESION_NUCLEUS), np.uint8(LESION))[inside]


def scan(image: np.ndarray, lesions: Sequence[SyntheticLesion], render_mpp: float,
         scanner_mpp: float | None) -> tuple[np.ndarray, list[SyntheticLesion], float | None]:
    """The rendered slide as a scanner of `scanner_mpp` um per pixel sees it (None: at the
    rendering's resolution, recording none): the image resampled (Lanczos, anti-aliased) and
    the lesions' coordinates scaled alike. Returns (image, lesions, exact mpp of the image)."""
    if scanner_mpp is None or abs(scanner_mpp - render_mpp) <= 1e-9 * render_mpp:
        return image, list(lesions), scanner_mpp
    if scanner_mpp < render_mpp:
        raise ValueError(f"a scanner of {scanner_mpp} um is finer than the rendering's "
                         f"{render_mpp} um")
    from PIL import Image

    height, width = image.shape[:2]
    size = (max(1, round(width * render_mpp / scanner_mpp)),
            max(1, round(height * render_mpp / scanner_mpp)))
    factor = np.array([size[0] / width, size[1] / height])
    scanned = np.asarray(Image.fromarray(image).resize(size, Image.Resampling.LANCZOS))
    moved = [dataclasses.replace(lesion, points=lesion.points * factor,
                                 hole=None if lesion.hole is None else lesion.hole * factor)
             for lesion in lesions]
    return scanned, moved, render_mpp / float(factor[0])


def write_slide(path: str, image: np.ndarray, lesions: Sequence[SyntheticLesion],
                render_mpp: float, scanner_mpp: float | None, levels: int = 5,
                tile_size: int = 256) -> list[SyntheticLesion]:
    """Writes a rendered slide as scanned at `scanner_mpp` (pyramidal TIFF with its resolution;
    None: no resolution recorded); returns the lesions in the scan's level-0 pixels."""
    scanned, moved, mpp = scan(image, lesions, render_mpp, scanner_mpp)
    if min(scanned.shape[:2]) < 2 ** (levels - 1) * 16:
        raise ValueError(f"a {scanned.shape[1]} x {scanned.shape[0]} scan is too small for "
                         f"{levels} pyramid levels")
    pyramid_tiff.write_pyramidal_tiff(path, scanned, levels=levels, tile_size=tile_size, mpp=mpp)
    return moved


def asap_xml(lesions: Sequence[SyntheticLesion]) -> str:
    """ASAP annotation XML (as CAMELYON distributes it) of the lesions and their holes."""
    root = ET.Element("ASAP_Annotations")
    annotations = ET.SubElement(root, "Annotations")
    polygons = [(lesion.points, lesion.group) for lesion in lesions]
    polygons += [(lesion.hole, "_2") for lesion in lesions if lesion.hole is not None]
    for i, (points, group) in enumerate(polygons):
        annotation = ET.SubElement(annotations, "Annotation", Name=f"Annotation {i}",
                                   Type="Polygon", PartOfGroup=group, Color="#F4FA58")
        coordinates = ET.SubElement(annotation, "Coordinates")
        for order, (x, y) in enumerate(points):
            ET.SubElement(coordinates, "Coordinate", Order=str(order), X=f"{x:.4f}",
                          Y=f"{y:.4f}")
    groups = ET.SubElement(root, "AnnotationGroups")
    for name in sorted({group for _, group in polygons}):
        group = ET.SubElement(groups, "Group", Name=name, PartOfGroup="None", Color="#FF0000")
        ET.SubElement(group, "Attributes")
    ET.indent(root)
    return '<?xml version="1.0"?>\n' + ET.tostring(root, encoding="unicode") + "\n"


def make_synthetic_slides(output_dir: str, num_patients: int = 10, seed: int = 0, *,
                          size: int = 2048, levels: int = 5, tile_size: int = 256,
                          nodes_per_patient: int = 1,
                          lesions_per_slide: tuple[int, int] = (3, 6),
                          xml_style: str = "camelyon17",
                          scanner_mpp: Sequence[float | None] = (DEFAULT_MPP,)) -> list[str]:
    """Writes a synthetic CAMELYON17-style slide tree; returns the slide paths (sorted).

    Args:
      size: level-0 width = height in pixels at the finest scanner's resolution.
      levels: pyramid levels (level k is size / 2**k).
      lesions_per_slide: inclusive range of lesions in a lesion slide.
      xml_style: "camelyon17" (group `metastases`) or "camelyon16" (`_0`/`_1` lesions, `_2`
        exclusions).
      scanner_mpp: the scanners' level-0 microns per pixel; patient i is scanned by scanner
        i % len(scanner_mpp), so two scanners give every centre slides of both (a mixed
        cohort). Slides are rendered at the finest and resampled for coarser scanners; None
        writes a slide without resolution metadata.

    Existing files are rewritten; every file appears atomically.
    """
    if xml_style not in ("camelyon17", "camelyon16"):
        raise ValueError(f"xml_style must be 'camelyon17' or 'camelyon16', got {xml_style!r}")
    if num_patients < 1 or nodes_per_patient < 1:
        raise ValueError("num_patients and nodes_per_patient must be >= 1")
    if size < 2 ** (levels - 1) * 16:
        raise ValueError(f"size {size} too small for {levels} pyramid levels")
    scanner_mpp = tuple(scanner_mpp) or (DEFAULT_MPP,)
    if any(m is not None and not m > 0 for m in scanner_mpp):
        raise ValueError(f"scanner resolutions must be positive microns per pixel, got "
                         f"{scanner_mpp}")
    render_mpp = min((m for m in scanner_mpp if m is not None), default=DEFAULT_MPP)
    annotation_dir = os.path.join(output_dir, "lesion_annotations")
    os.makedirs(annotation_dir, exist_ok=True)
    paths = []
    for i in range(num_patients):
        patient = patient_number(i)
        center = patient // camelyon.PATIENTS_PER_CENTER
        has_lesions = (i // NUM_CENTERS) % 2 == 0
        for node in range(nodes_per_patient):
            rng = np.random.default_rng([seed, patient, node])
            name = f"patient_{patient:03d}_node_{node}"
            image, lesions = render_slide(rng, size, lesions_per_slide if has_lesions else None,
                                          xml_style)
            slide_dir = os.path.join(output_dir, f"center_{center}")
            os.makedirs(slide_dir, exist_ok=True)
            path = os.path.join(slide_dir, f"{name}.tif")
            lesions = write_slide(path, image, lesions, render_mpp,
                                  scanner_mpp[i % len(scanner_mpp)], levels, tile_size)
            if lesions:
                atomic.write_text(os.path.join(annotation_dir, f"{name}.xml"), asap_xml(lesions))
            paths.append(path)
    return sorted(paths)
