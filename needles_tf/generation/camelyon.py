"""Reading CAMELYON16/17 as distributed: slides, ASAP XML lesion annotations, centres, masks.

* Slides are opened and read with openslide at a pyramid level or a resolution in microns per
  pixel by `wsi` (only regions, never a whole level-0 image).
* ASAP XML: ``<ASAP_Annotations><Annotations><Annotation PartOfGroup=.. Type=..><Coordinates>
  <Coordinate Order X Y/>``, level-0 pixel coordinates. Lesion groups default to CAMELYON17's
  ``metastases`` and CAMELYON16's ``_0``/``_1``; exclusion groups (cut out of lesions) to
  CAMELYON16's ``_2``; annotations in other groups are ignored, as are those with fewer than three
  points (dots: no area).
* Masks are rasterised on one grid of the slide (`rasterize`: a pyramid level or a resolution,
  wsi.Level) over the bounding box of the lesions only, with a pixel inside when its centre is;
  connected lesion regions (8-connected) come from `lesion_regions`.
* Centre: the ``center_K`` folder a slide sits in, else CAMELYON17's naming
  (``patient_XXX_node_Y``: centre = XXX // 20); the two must agree when both exist. Split by
  centre: 3 -> val, 4 -> test, others -> train (configurable).

Every problem with an input raises `SlideError` whose message starts with the file's path.
"""

from __future__ import annotations

import csv
import dataclasses
import logging
import os
import re
import xml.etree.ElementTree as ET
from typing import Iterable, Sequence

import numpy as np

from needles_tf.generation.wsi import Level, SlideError

SLIDE_EXTENSIONS = (".tif", ".tiff")
DEFAULT_LESION_GROUPS = ("metastases", "_0", "_1")
DEFAULT_EXCLUSION_GROUPS = ("_2",)
PATIENTS_PER_CENTER = 20
_CENTER_DIR = re.compile(r"^center_(\d+)$")
_PATIENT_NAME = re.compile(r"^patient_(\d+)_node_\d+$")

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Polygon:
    """One annotation polygon: its name, group and level-0 vertices (float [N, 2], x and y)."""

    name: str
    group: str
    points: np.ndarray


@dataclasses.dataclass(frozen=True)
class Annotations:
    """The lesion and exclusion polygons of one ASAP XML file."""

    path: str
    lesions: tuple[Polygon, ...]
    exclusions: tuple[Polygon, ...]


def parse_asap_xml(path: str, lesion_groups: Sequence[str] = DEFAULT_LESION_GROUPS,
                   exclusion_groups: Sequence[str] = DEFAULT_EXCLUSION_GROUPS) -> Annotations:
    """Lesion and exclusion polygons of an ASAP XML file (SlideError naming it if malformed)."""
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as e:
        raise SlideError(f"{path}: malformed XML ({e}); expected ASAP annotations") from e
    except OSError as e:
        raise SlideError(f"{path}: cannot read annotation file ({e.strerror})") from e
    if root.tag != "ASAP_Annotations":
        raise SlideError(f"{path}: root element <{root.tag}>, expected <ASAP_Annotations>")
    lesions, exclusions, groups_seen = [], [], set()
    for i, annotation in enumerate(root.iter("Annotation")):
        group = annotation.get("PartOfGroup", "")
        name = annotation.get("Name", f"#{i}")
        groups_seen.add(group)
        if group not in lesion_groups and group not in exclusion_groups:
            continue
        points = []
        for coordinate in annotation.iter("Coordinate"):
            try:
                order = int(coordinate.get("Order", len(points)))
                points.append((order, float(coordinate.get("X")), float(coordinate.get("Y"))))
            except (TypeError, ValueError) as e:
                raise SlideError(f"{path}: annotation {name!r} has a coordinate without numeric "
                                 f"Order/X/Y ({dict(coordinate.attrib)})") from e
        if len(points) < 3:
            continue
        xy = np.array([p[1:] for p in sorted(points)], np.float64)
        if not np.isfinite(xy).all():
            raise SlideError(f"{path}: annotation {name!r} has non-finite coordinates")
        target = lesions if group in lesion_groups else exclusions
        target.append(Polygon(name, group, xy))
    if not lesions:
        raise SlideError(f"{path}: no lesion polygon in groups {list(lesion_groups)} (groups "
                         f"found: {sorted(groups_seen)}); set the lesion group names")
    return Annotations(path, tuple(lesions), tuple(exclusions))


# ------------------------------------------------------------------------------ slide files

def find_slides(slide_dir: str) -> list[str]:
    """Paths of every slide file (.tif/.tiff) under `slide_dir`, recursively, sorted."""
    if not os.path.isdir(slide_dir):
        raise SlideError(f"{slide_dir}: not a directory; expected a CAMELYON slide folder")
    return sorted(files_under(slide_dir, SLIDE_EXTENSIONS))


def files_under(folder: str, suffixes: tuple[str, ...]) -> list[str]:
    """Paths of the files under `folder` (recursively, in a fixed order: folders and files by
    name) whose names end, in any case, with one of `suffixes`."""
    found = []
    for root, dirs, files in os.walk(folder):
        dirs.sort()
        found += [os.path.join(root, f) for f in sorted(files) if f.lower().endswith(suffixes)]
    return found


def slide_name(path: str) -> str:
    """The slide's name: its file name without extension (patient_004_node_4)."""
    return os.path.splitext(os.path.basename(path))[0]


def annotation_path(slide_path: str, annotation_dir: str | None) -> str | None:
    """The slide's ASAP XML (`annotation_dir`/name.xml, default beside the slide) or None."""
    folder = annotation_dir if annotation_dir is not None else os.path.dirname(slide_path)
    path = os.path.join(folder, slide_name(slide_path) + ".xml")
    return path if os.path.isfile(path) else None


def slide_center(path: str) -> int:
    """The acquisition centre of a slide: its center_K folder and/or patient number // 20."""
    folder = _CENTER_DIR.match(os.path.basename(os.path.dirname(os.path.abspath(path))))
    named = _PATIENT_NAME.match(slide_name(path))
    from_name = int(named.group(1)) // PATIENTS_PER_CENTER if named else None
    if folder:
        center = int(folder.group(1))
        if from_name is not None and from_name != center:
            raise SlideError(f"{path}: slide of patient {int(named.group(1))} (centre "
                             f"{from_name} in CAMELYON17 naming) lies in folder center_{center}")
        return center
    if from_name is None:
        raise SlideError(f"{path}: cannot tell the slide's centre; expected it in a center_K "
                         "folder or named patient_XXX_node_Y (centre = XXX // 20)")
    return from_name


def split_of_center(center: int, val_centers: Iterable[int] = (3,),
                    test_centers: Iterable[int] = (4,)) -> str:
    """"val", "test" or "train" for a centre."""
    if center in tuple(val_centers):
        return "val"
    return "test" if center in tuple(test_centers) else "train"


@dataclasses.dataclass(frozen=True)
class SlideSource:
    """A slide found on disk: path, name, centre, split and ASAP XML (None: no lesions)."""

    path: str
    name: str
    center: int
    split: str
    annotation: str | None


def discover_slides(slide_dir: str, annotation_dir: str | None = None,
                    val_centers: Iterable[int] = (3,), test_centers: Iterable[int] = (4,),
                    stage_labels: str | None = None, strict: bool = False,
                    skipped: list[dict] | None = None) -> list[SlideSource]:
    """Usable slides with their centre, split and annotation; bad ones go to `skipped`
    (or raise with `strict`)."""
    skipped = skipped if skipped is not None else []
    if annotation_dir is not None and not os.path.isdir(annotation_dir):
        raise SlideError(f"{annotation_dir}: annotation directory not found")
    stages = read_stage_labels(stage_labels) if stage_labels else None
    sources, names = [], {}
    for path in find_slides(slide_dir):
        name = slide_name(path)
        if name in names:
            raise SlideError(f"{path}: a second slide named {name!r} (also "
                                      f"{names[name]}); slide names must be unique")
        names[name] = path
        xml = annotation_path(path, annotation_dir)
        if xml is None and stages is not None and stages.get(name) != "negative":
            log.info("%s: no annotation and stage %r, not used", path, stages.get(name))
            continue
        try:
            center = slide_center(path)
        except SlideError as e:
            if strict:
                raise
            log.warning("skipping slide: %s", e)
            skipped.append({"slide": path, "error": str(e)})
            continue
        split = split_of_center(center, val_centers, test_centers)
        sources.append(SlideSource(path, name, center, split, xml))
    return sources


def read_stage_labels(path: str) -> dict[str, str]:
    """CAMELYON17 stage_labels.csv (patient,stage): slide name -> stage (negative, itc, ...)."""
    try:
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))
    except OSError as e:
        raise SlideError(f"{path}: cannot read stage labels ({e.strerror})") from e
    if not rows or not {"patient", "stage"} <= set(rows[0]):
        raise SlideError(f"{path}: expected a CSV with columns patient,stage "
                         "(CAMELYON17 stage_labels.csv)")
    return {slide_name(r["patient"]): r["stage"].strip().lower() for r in rows
            if r["patient"].lower().endswith(SLIDE_EXTENSIONS)}


# ------------------------------------------------------------------------------ masks

@dataclasses.dataclass(frozen=True)
class LesionMask:
    """Lesion mask of a slide on one grid (wsi.Level), stored only over the lesions' bounding box.

    `pixels` (bool [h, w]) covers level pixels [y0, y0 + h) x [x0, x0 + w); the level is
    `height` x `width`; everything outside `pixels` is lesion-free.
    """

    pixels: np.ndarray
    y0: int
    x0: int
    height: int
    width: int

    def window(self, y: int, x: int, h: int, w: int) -> np.ndarray:
        """The mask of level pixels [y, y + h) x [x, x + w) (bool, zero outside the lesions)."""
        out = np.zeros((h, w), bool)
        ph, pw = self.pixels.shape
        top, left = max(y, self.y0), max(x, self.x0)
        bottom, right = min(y + h, self.y0 + ph), min(x + w, self.x0 + pw)
        if top < bottom and left < right:
            out[top - y:bottom - y, left - x:right - x] = self.pixels[
                top - self.y0:bottom - self.y0, left - self.x0:right - self.x0]
        return out


def rasterize(annotations: Annotations, level: Level, slide_path: str = "") -> LesionMask:
    """Lesion polygons minus exclusion polygons at `level`; SlideError if any point lies
    outside the slide."""
    from PIL import Image, ImageDraw

    polygons = annotations.lesions + annotations.exclusions
    for polygon in polygons:
        x, y = polygon.points[:, 0], polygon.points[:, 1]
        if x.min() < 0 or y.min() < 0 or x.max() > level.width0 or y.max() > level.height0:
            raise SlideError(
                f"{annotations.path}: annotation {polygon.name!r} ({polygon.group}) reaches "
                f"({x.min():.0f}..{x.max():.0f}, {y.min():.0f}..{y.max():.0f}), outside the "
                f"{level.width0}x{level.height0} slide {slide_path or ''}".rstrip())
    # Level pixel (i, j) has its centre at level-0 ((j + 0.5) * d, (i + 0.5) * d).
    scaled = [p.points / level.downsample - 0.5 for p in polygons]
    lesion_xy = np.concatenate(scaled[:len(annotations.lesions)])
    x0, y0 = np.floor(lesion_xy.min(0)).astype(int).clip(0)
    x1 = min(int(np.ceil(lesion_xy[:, 0].max())) + 1, level.width)
    y1 = min(int(np.ceil(lesion_xy[:, 1].max())) + 1, level.height)
    canvas = Image.new("L", (max(x1 - x0, 1), max(y1 - y0, 1)), 0)
    draw = ImageDraw.Draw(canvas)
    for i, xy in enumerate(scaled):
        draw.polygon([tuple(p) for p in xy - (x0, y0)], fill=int(i < len(annotations.lesions)))
    return LesionMask(np.asarray(canvas, bool), int(y0), int(x0), level.height, level.width)


@dataclasses.dataclass(frozen=True)
class Region:
    """A connected lesion region: its box (ymin, xmin, ymax, xmax; max exclusive) and area in
    level pixels."""

    index: int
    box: tuple[int, int, int, int]
    area: int


def lesion_regions(mask: LesionMask) -> list[Region]:
    """The 8-connected lesion regions of a mask, ordered by their top-left corner."""
    from scipy import ndimage

    labels, count = ndimage.label(mask.pixels, structure=np.ones((3, 3), int))
    areas = np.bincount(labels.ravel(), minlength=count + 1)
    boxes = []
    for label, found in enumerate(ndimage.find_objects(labels), start=1):
        ys, xs = found
        boxes.append(((ys.start + mask.y0, xs.start + mask.x0, ys.stop + mask.y0,
                       xs.stop + mask.x0), int(areas[label])))
    boxes.sort()
    return [Region(i, box, area) for i, (box, area) in enumerate(boxes)]
