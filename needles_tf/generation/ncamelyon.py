"""nCAMELYON: "are there metastases in this crop?" - crops of CAMELYON slides with controlled O2I.

Extraction (paper, appendix A.2), for one crop size c and one O2I bin (lo, hi]:

1. Slides are found under the slide folder; each gets its centre (camelyon.slide_center) and
   split (centre 3 -> val, 4 -> test, others -> train). A slide with an ASAP XML is a lesion
   slide; one without is a negative slide (with a CAMELYON17 stage_labels.csv, only those
   labelled "negative"; unannotated positive slides are left out).
2. Lesion slides, in parallel over slides: the lesion mask on the slide's grid (at `mpp` microns
   per pixel whatever the scanner, else pyramid `level`; wsi.py), exclusions removed, its
   8-connected regions, and per region `crops_per_region` distinct random c x c windows (grid
   pixels) that lie inside the slide and contain the whole region; those whose
   lesion fraction (all lesion pixels in the window / c^2) lies in the bin are kept. Regions
   larger than c or whose own area exceeds hi * c^2 give none.
3. Negatives balance each split: a split's N positives are matched by N negatives spread evenly
   over its negative slides, each slide drawing random windows and keeping those with mean green
   value below `max_mean_green` (200; not mostly background), at most `negative_tries` reads per
   negative wanted; slides that filled their share are asked for more while a split falls short
   (a failed or tissue-poor slide). A remaining shortfall is logged and shows in the summary; a
   split left with positives and no negatives is an error (its AUC would be undefined) unless
   allowed.
4. Records (writer.write_dataset, kind "ncamelyon"): within a split, positives and negatives
   alternate (slide order, then region and crop order). Each holds the RGB crop, the lesion mask
   (`object/mask`, 0/255), the box of its lesion pixels, the O2I (lesion fraction) and
   `source/id` = "<slide>/region_<r>/crop_<k> x=<x> y=<y>" ("<slide>/negative/crop_<k> x=..
   y=.." for negatives), x, y the window's top-left corner in grid pixels. dataset.json records
   each slide read's resolution (level-0 mpp, level read, crops' mpp) and `params.crop_mpp`,
   the crops' microns per pixel, which a trained model's slide prediction reads at.

Every random draw is keyed by (seed, slide name, region), so the data set is the same whatever
the number of workers. Step 2 and 3 results are cached per slide under <output_dir>/slides/
(keyed by the slide and annotation files' size and mtime and the parameters), so an interrupted
run resumes slide by slide; the record shards resume as in writer.write_dataset.
A slide that fails (unreadable, malformed XML, annotation outside the slide, no centre, no
resolution when one is asked for) is reported and skipped, and listed in dataset.json and the
summary; `strict=True` raises instead.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import zlib
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from needles_tf.data import metadata, schema
from needles_tf.generation import camelyon, ncamelyon_plans, ncamelyon_tables, writer, wsi
from needles_tf.generation.camelyon import SlideSource
from needles_tf.generation.ncamelyon_config import NcamelyonConfig

CACHE_DIR = "slides"

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class CropSpec:
    """One record to write: where its window is and what it is."""

    slide: str        # slide name
    path: str
    label: int
    x: int
    y: int
    region: int       # region index (-1 for negatives)
    index: int        # crop index within its region (negatives: within the slide)
    o2i: float

    @property
    def source_id(self) -> str:
        part = f"region_{self.region}" if self.label else "negative"
        return f"{self.slide}/{part}/crop_{self.index} x={self.x} y={self.y}"


class CropWriter:
    """The writer's `make_example`: reads a crop window and encodes its record; picklable."""

    def __init__(self, crops: Mapping[str, Sequence[CropSpec]], config: NcamelyonConfig,
                 cache_dir: str, max_open: int = 4):
        self.crops = {s: list(c) for s, c in crops.items()}
        self.config, self.cache_dir, self.max_open = config, cache_dir, max_open
        self._slides: dict[str, tuple] = {}

    def __getstate__(self):
        return {**self.__dict__, "_slides": {}}  # open slides stay in their process

    def _open(self, crop: CropSpec) -> tuple:
        if crop.path not in self._slides:
            if len(self._slides) >= self.max_open:
                oldest = next(iter(self._slides))
                self._slides.pop(oldest)[0].close()
            slide = wsi.open_slide(crop.path)
            level = self.config.grid(slide, crop.path)
            mask = None
            if crop.label:
                mask_path = os.path.join(self.cache_dir, f"{crop.slide}.lesions.mask.npz")
                mask = ncamelyon_plans.load_mask(mask_path)
            self._slides[crop.path] = (slide, level, mask)
        return self._slides[crop.path]

    def crop(self, split: str, index: int) -> tuple[np.ndarray, np.ndarray, CropSpec]:
        """RGB crop, lesion mask (bool) and spec of record `index` of `split`."""
        spec = self.crops[split][index]
        slide, level, mask = self._open(spec)
        c = self.config.crop_size
        image = wsi.read_crop(slide, level, spec.x, spec.y, c, spec.path)
        lesion = mask.window(spec.y, spec.x, c, c) if mask is not None else np.zeros((c, c), bool)
        return image, lesion, spec

    def __call__(self, split: str, index: int) -> tuple[bytes, int]:
        image, lesion, spec = self.crop(split, index)
        bbox = None
        if spec.label:
            rows, cols = np.flatnonzero(lesion.any(1)), np.flatnonzero(lesion.any(0))
            bbox = (int(rows[0]), int(cols[0]), int(rows[-1]) + 1, int(cols[-1]) + 1)
        serialized = schema.encode_example(
            image, label=spec.label, o2i=float(lesion.mean()), bbox=bbox,
            source_id=spec.source_id, mask=lesion.astype(np.uint8) * 255,
            png_strategy=zlib.Z_DEFAULT_STRATEGY)
        return serialized, spec.label


def _interleave(positives: list[CropSpec], negatives: list[CropSpec]) -> list[CropSpec]:
    out = []
    for i in range(max(len(positives), len(negatives))):
        out += positives[i:i + 1] + negatives[i:i + 1]
    return out


def _allocate(plans: Iterable[tuple[SlideSource, dict]], needed: int) -> list[CropSpec]:
    """Round-robin over the slides' windows until `needed` negatives are taken."""
    queues = [(source, plan["windows"]) for source, plan in plans]
    taken = [0] * len(queues)
    out = []
    while len(out) < needed and any(t < len(q[1]) for t, q in zip(taken, queues)):
        for i, (source, windows) in enumerate(queues):
            if len(out) < needed and taken[i] < len(windows):
                x, y, _ = windows[taken[i]]
                out.append(CropSpec(source.name, source.path, 0, x, y, -1, taken[i], 0.0))
                taken[i] += 1
    return sorted(out, key=lambda c: (c.slide, c.index))


def _check_negatives(summary: Mapping[str, Mapping[str, int]], config: NcamelyonConfig,
                     allow: bool) -> None:
    """A split with positives and no negatives has no AUC: an error unless `allow`; fewer
    negatives than positives is a warning."""
    centers = {"val": config.val_centers, "test": config.test_centers}
    for split, info in summary.items():
        if info["positives"] and not info["negatives"] and not allow:
            where = (f"centres {','.join(map(str, centers[split]))}" if split in centers
                     else "the training centres")
            raise metadata.DatasetError(
                f"split {split!r} has {info['positives']} positives and no negatives "
                f"({info['negative_slides']} negative slides in {where}, "
                f"{info['lesion_slides']} lesion slides): its AUC would be undefined; add "
                "lesion-free slides, move centres with --val_centers / --test_centers, or pass "
                "--allow_missing_negatives to write it anyway")
        if info["negatives"] < info["positives"]:
            log.warning("%s: only %d negatives for %d positives (too few negative slides or too "
                        "little tissue)", split, info["negatives"], info["positives"])


def _resolution(grid: Mapping[str, Any] | None) -> dict[str, Any]:
    """A slide's resolution for dataset.json: level-0 um per pixel, the level read and the
    crops' um per pixel (None where the slide records none)."""
    if grid is None:
        return {"mpp": None, "read_level": None, "crop_mpp": None}
    base = grid.get("mpp") and grid["mpp"] / grid["downsample"]
    return {"mpp": base, "read_level": grid["index"], "crop_mpp": grid.get("mpp")}


def _crop_mpp(config: NcamelyonConfig, grids: Mapping[str, Mapping[str, Any]]) -> float | None:
    """The crops' microns per pixel: the target, or at a pyramid level the resolution every
    slide read shares (within 2 %); None when they differ or record none (a mixed cohort read by
    --level: use --mpp)."""
    if config.mpp is not None:
        return config.mpp
    values = [grid.get("mpp") for grid in grids.values()]
    if not values or None in values or max(values) > min(values) * (1 + wsi.SQUARE_TOLERANCE):
        return None
    return float(np.median(values))


def build_ncamelyon(slide_dir: str, output_dir: str, config: NcamelyonConfig | None = None, *,
                    annotation_dir: str | None = None, stage_labels: str | None = None,
                    workers: int = 1, strict: bool = False, overwrite: bool = False,
                    progress: bool = True,
                    allow_missing_negatives: bool = False) -> dict[str, Any]:
    """Extracts an nCAMELYON data set (TFRecords, dataset.json, summary.md/.csv); returns its
    metadata (with "summary" per split, "skipped" slides and each slide's resolution).

    Args:
      annotation_dir: folder of <slide name>.xml (default: beside each slide).
      stage_labels: CAMELYON17 stage_labels.csv, to take negatives only from slides labelled
        negative.
      allow_missing_negatives: write a split that has positives but no negatives (its AUC is
        undefined) instead of raising.

    Raises:
      metadata.DatasetError: no crop at all, or a split without negatives (unless allowed).
      camelyon.SlideError: a bad slide with `strict`.
    """
    config = config or NcamelyonConfig()
    cache_dir = os.path.join(output_dir, CACHE_DIR)
    os.makedirs(cache_dir, exist_ok=True)
    skipped: list[dict] = []
    sources = camelyon.discover_slides(slide_dir, annotation_dir, config.val_centers,
                                       config.test_centers, stage_labels, strict, skipped)

    lesion_sources = [s for s in sources if s.annotation is not None]
    lesion_plans = ncamelyon_plans.run_slide_tasks(
        [("lesions", s, config, None, cache_dir) for s in lesion_sources], workers, strict,
        progress, "lesion slides", skipped)
    positives: dict[str, list[CropSpec]] = {s: [] for s in metadata.SPLITS}
    for source in lesion_sources:
        for region in lesion_plans.get(source.name, {"regions": []})["regions"]:
            for k, (x, y, fraction) in enumerate(region["windows"]):
                positives[source.split].append(CropSpec(
                    source.name, source.path, 1, x, y, region["index"], k, fraction))

    negative_sources = [s for s in sources if s.annotation is None]
    needed = {split: len(v) for split, v in positives.items()}
    negative_plans = ncamelyon_plans.plan_negatives(negative_sources, needed, config, cache_dir,
                                                    workers, strict, progress, skipped)
    crops = {}
    for split in metadata.SPLITS:
        plans = [(s, negative_plans[s.name]) for s in negative_sources
                 if s.split == split and s.name in negative_plans]
        crops[split] = _interleave(positives[split], _allocate(plans, len(positives[split])))

    failed = {k["slide"] for k in skipped}
    used = [s for s in sources if s.path not in failed]
    summary = ncamelyon_tables.split_summary(used, lesion_plans, crops)
    if not any(crops.values()):
        raise metadata.DatasetError(
            f"{slide_dir}: no crop of size {config.crop_size} with O2I in ({config.o2i_bin}] % "
            f"found in {len(lesion_plans)} lesion slides ({len(skipped)} skipped)")
    _check_negatives(summary, config, allow_missing_negatives)
    plan_digest = hashlib.sha256(json.dumps(
        {s: [dataclasses.astuple(c) for c in v] for s, v in crops.items()}).encode()).hexdigest()
    grids = {name: plan["level"] for plans in (lesion_plans, negative_plans)
             for name, plan in plans.items()}
    params = {**config.to_dict(), "plan_sha256": plan_digest, "crop_mpp": _crop_mpp(config, grids)}
    params.pop("num_shards")
    extra = {"slide_dir": os.path.abspath(slide_dir),
             "annotation_dir": annotation_dir and os.path.abspath(annotation_dir),
             "summary": summary, "skipped": skipped,
             "slides": {s.name: {"split": s.split, "center": s.center,
                                 "lesions": s.annotation is not None,
                                 **_resolution(grids.get(s.name))} for s in used}}
    meta = writer.write_dataset(
        output_dir, kind="ncamelyon", params=params,
        image={"height": config.crop_size, "width": config.crop_size, "channels": 3},
        split_sizes={s: len(crops[s]) for s in metadata.SPLITS},
        make_example=CropWriter(crops, config, cache_dir),
        num_shards=config.num_shards, workers=workers, overwrite=overwrite, progress=progress,
        extra=extra)
    ncamelyon_tables.write_summary(output_dir, meta)
    return meta
