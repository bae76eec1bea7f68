"""nCAMELYON: "are there metastases in this crop?" - crops of CAMELYON slides with controlled O2I.

Extraction (design.md, paper appendix A.2), for one crop size c and one O2I bin (lo, hi]:

1. Slides are found under the slide folder; each gets its centre (camelyon.slide_center) and
   split (centre 3 -> val, 4 -> test, others -> train). A slide with an ASAP XML is a lesion
   slide; one without is a negative slide (with a CAMELYON17 stage_labels.csv, only those
   labelled "negative"; unannotated positive slides are left out).
2. Lesion slides, in parallel over slides: the lesion mask at pyramid `level` (exclusions
   removed), its 8-connected regions, and per region `crops_per_region` distinct random c x c
   windows (level pixels) that lie inside the slide and contain the whole region; those whose
   lesion fraction (all lesion pixels in the window / c^2) lies in the bin are kept. Regions
   larger than c or whose own area exceeds hi * c^2 give none.
3. Negatives balance each split: a split's N positives are matched by N negatives spread evenly
   over its negative slides, each slide drawing random windows and keeping those with mean green
   value below `max_mean_green` (200; not mostly background), at most `negative_tries` reads per
   negative wanted; slides that filled their share are asked for more while a split falls short
   (a failed or tissue-poor slide). A remaining shortfall is logged and shows in the summary.
4. Records (records.write_dataset, kind "ncamelyon"): within a split, positives and negatives
   alternate (slide order, then region and crop order). Each holds the RGB crop, the lesion mask
   (`object/mask`, 0/255), the box of its lesion pixels, the O2I (lesion fraction) and
   `source/id` = "<slide>/region_<r>/crop_<k> x=<x> y=<y>" ("<slide>/negative/crop_<k> x=..
   y=.." for negatives), x, y the window's top-left corner in pixels of the pyramid level.

Every random draw is keyed by (seed, slide name, region), so the data set is the same whatever
the number of workers. Step 2 and 3 results are cached per slide under <output_dir>/slides/
(keyed by the slide and annotation files' size and mtime and the parameters), so an interrupted
run resumes slide by slide; the record shards resume as in records.write_dataset.
A slide that fails (unreadable, malformed XML, annotation outside the slide, no centre) is
reported and skipped, and listed in dataset.json and the summary; `strict=True` raises instead.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import logging
import multiprocessing
import os
import zlib
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from needles_tf import atomic
from needles_tf.data import camelyon, records

O2I_BINS = {"50-100": (0.5, 1.0), "10-50": (0.1, 0.5), "1-10": (0.01, 0.1),
            "0.1-1": (0.001, 0.01)}
CROP_SIZES = (128, 256, 512, 1024)  # the paper's
CACHE_DIR = "slides"
CACHE_VERSION = 1
SUMMARY_MD = "summary.md"
SUMMARY_CSV = "summary.csv"
SPLIT_TITLES = {"train": "Train", "val": "Val", "test": "Test"}

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class NcamelyonConfig:
    """Parameters of one nCAMELYON data set (one crop size, one O2I bin)."""

    crop_size: int = 256
    o2i_bin: str = "1-10"
    crops_per_region: int = 50
    level: int = 3
    seed: int = 0
    lesion_groups: tuple[str, ...] = camelyon.DEFAULT_LESION_GROUPS
    exclusion_groups: tuple[str, ...] = camelyon.DEFAULT_EXCLUSION_GROUPS
    val_centers: tuple[int, ...] = (3,)
    test_centers: tuple[int, ...] = (4,)
    max_mean_green: float = 200.0
    negative_tries: int = 20
    num_shards: int = 8

    def __post_init__(self):
        if self.o2i_bin not in O2I_BINS:
            raise ValueError(f"o2i_bin must be one of {list(O2I_BINS)}, got {self.o2i_bin!r}")
        for name in ("crop_size", "crops_per_region", "negative_tries", "num_shards"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.level < 0 or self.seed < 0:
            raise ValueError(f"level and seed must be >= 0, got {self.level}, {self.seed}")
        if set(self.val_centers) & set(self.test_centers):
            raise ValueError(f"val_centers {self.val_centers} and test_centers "
                             f"{self.test_centers} overlap")
        # Lists from JSON or flags become tuples, so configs compare and hash alike.
        for name in ("lesion_groups", "exclusion_groups", "val_centers", "test_centers"):
            object.__setattr__(self, name, tuple(getattr(self, name)))

    @property
    def bounds(self) -> tuple[float, float]:
        """The O2I bin as fractions (lo, hi]."""
        return O2I_BINS[self.o2i_bin]

    def to_dict(self) -> dict[str, Any]:
        return json.loads(json.dumps(dataclasses.asdict(self)))


@dataclasses.dataclass(frozen=True)
class SlideSource:
    """A slide found on disk: path, name, centre, split and ASAP XML (None: no lesions)."""

    path: str
    name: str
    center: int
    split: str
    annotation: str | None


# ------------------------------------------------------------------------------ per-slide plans

def _rng(seed: int, name: str, stream: int) -> np.random.Generator:
    """Random stream of a slide: 0 for its negatives, 1 + r for lesion region r."""
    return np.random.default_rng([seed, zlib.crc32(name.encode()), stream])


def positive_windows(mask: camelyon.LesionMask, region: camelyon.Region,
                     config: NcamelyonConfig, rng: np.random.Generator) -> list[list[float]]:
    """[x, y, o2i] of the kept windows of one region (see the module docstring, step 2)."""
    c = config.crop_size
    lo, hi = config.bounds
    ymin, xmin, ymax, xmax = region.box
    if ymax - ymin > c or xmax - xmin > c or region.area > hi * c * c:
        return []
    y_lo, y_hi = max(0, ymax - c), min(ymin, mask.height - c)
    x_lo, x_hi = max(0, xmax - c), min(xmin, mask.width - c)
    if y_lo > y_hi or x_lo > x_hi:
        return []
    nx = x_hi - x_lo + 1
    count = (y_hi - y_lo + 1) * nx
    kept = []
    for flat in rng.choice(count, size=min(config.crops_per_region, count), replace=False):
        y, x = y_lo + int(flat) // nx, x_lo + int(flat) % nx
        fraction = float(mask.window(y, x, c, c).sum()) / (c * c)
        if lo < fraction <= hi:
            kept.append([x, y, fraction])
    return kept


def _file_key(path: str | None) -> list | None:
    if path is None:
        return None
    stat = os.stat(path)
    return [os.path.abspath(path), stat.st_size, stat.st_mtime_ns]


def _cache_key(source: SlideSource, config: NcamelyonConfig, quota: int | None) -> dict:
    fields = dataclasses.asdict(config)
    fields.pop("num_shards")
    if quota is not None:  # negatives do not depend on annotations or the bin
        for name in ("o2i_bin", "crops_per_region", "lesion_groups", "exclusion_groups"):
            fields.pop(name)
    return json.loads(json.dumps({
        "version": CACHE_VERSION, "slide": _file_key(source.path),
        "annotation": _file_key(source.annotation), "config": fields, "quota": quota}))


def _cache_paths(cache_dir: str, source: SlideSource, kind: str) -> tuple[str, str]:
    base = os.path.join(cache_dir, f"{source.name}.{kind}")
    return base + ".json", base + ".mask.npz"


def save_mask(path: str, mask: camelyon.LesionMask) -> None:
    """Writes a LesionMask (bit-packed, compressed) atomically."""
    buffer = io.BytesIO()
    np.savez_compressed(buffer, bits=np.packbits(mask.pixels), shape=mask.pixels.shape,
                        origin=[mask.y0, mask.x0], level_shape=[mask.height, mask.width])
    atomic.write_bytes(path, buffer.getvalue())


def load_mask(path: str) -> camelyon.LesionMask:
    """Reads a LesionMask written by save_mask."""
    with np.load(path) as data:
        h, w = (int(v) for v in data["shape"])
        pixels = np.unpackbits(data["bits"], count=h * w).reshape(h, w).astype(bool)
        (y0, x0), (height, width) = data["origin"], data["level_shape"]
    return camelyon.LesionMask(pixels, int(y0), int(x0), int(height), int(width))


def plan_lesion_slide(source: SlideSource, config: NcamelyonConfig,
                      cache_dir: str) -> dict[str, Any]:
    """Regions and positive windows of a lesion slide (cached); writes its mask to the cache."""
    meta_path, mask_path = _cache_paths(cache_dir, source, "lesions")
    key = _cache_key(source, config, None)
    cached = _read_cache(meta_path, key)
    if cached is not None and os.path.isfile(mask_path):
        return cached
    annotations = camelyon.parse_asap_xml(source.annotation, config.lesion_groups,
                                          config.exclusion_groups)
    slide = camelyon.open_slide(source.path)
    try:
        level = camelyon.slide_level(slide, config.level, source.path)
    finally:
        slide.close()
    mask = camelyon.rasterize(annotations, level, source.path)
    regions = []
    for region in camelyon.lesion_regions(mask):
        windows = positive_windows(mask, region, config, _rng(config.seed, source.name,
                                                              1 + region.index))
        regions.append({"index": region.index, "box": list(region.box), "area": region.area,
                        "windows": windows})
    save_mask(mask_path, mask)
    plan = {"level": dataclasses.asdict(level), "regions": regions}
    _write_cache(meta_path, key, plan)
    return plan


def plan_negative_slide(source: SlideSource, config: NcamelyonConfig, quota: int,
                        cache_dir: str) -> dict[str, Any]:
    """Up to `quota` tissue windows [x, y, mean green] of a lesion-free slide (cached)."""
    meta_path, _ = _cache_paths(cache_dir, source, "negatives")
    key = _cache_key(source, config, quota)
    cached = _read_cache(meta_path, key)
    if cached is not None:
        return cached
    c = config.crop_size
    slide = camelyon.open_slide(source.path)
    try:
        level = camelyon.slide_level(slide, config.level, source.path)
        windows, seen = [], set()
        rng = _rng(config.seed, source.name, 0)
        if level.width >= c and level.height >= c:
            for _ in range(quota * config.negative_tries):
                if len(windows) == quota:
                    break
                x = int(rng.integers(0, level.width - c + 1))
                y = int(rng.integers(0, level.height - c + 1))
                if (x, y) in seen:
                    continue
                seen.add((x, y))
                green = float(camelyon.read_crop(slide, level, x, y, c, source.path)[..., 1]
                              .mean())
                if green < config.max_mean_green:
                    windows.append([x, y, green])
    finally:
        slide.close()
    plan = {"level": dataclasses.asdict(level), "windows": windows}
    _write_cache(meta_path, key, plan)
    return plan


def _read_cache(path: str, key: dict) -> dict | None:
    try:
        with open(path) as f:
            cached = json.load(f)
    except (OSError, ValueError):
        return None
    return cached.get("plan") if cached.get("key") == key else None


def _write_cache(path: str, key: dict, plan: dict) -> None:
    atomic.write_json(path, {"key": key, "plan": plan})


def _plan_task(task: tuple) -> tuple[str, dict | str]:
    """Worker entry: ("ok", plan) or ("error", message) for one slide."""
    kind, source, config, quota, cache_dir = task
    try:
        if kind == "lesions":
            return "ok", plan_lesion_slide(source, config, cache_dir)
        return "ok", plan_negative_slide(source, config, quota, cache_dir)
    except camelyon.SlideError as e:
        return "error", str(e)


def _run_tasks(tasks: list[tuple], workers: int, strict: bool, progress: bool, desc: str,
               skipped: list[dict]) -> dict[str, dict]:
    """Runs per-slide tasks (in parallel); returns plans by slide name, records failures."""
    from tqdm.auto import tqdm

    plans = {}
    pool = None
    try:
        if workers > 1 and len(tasks) > 1:
            pool = multiprocessing.get_context("spawn").Pool(min(workers, len(tasks)))
            results = pool.imap(_plan_task, tasks)
        else:
            results = map(_plan_task, tasks)
        for task, (status, result) in tqdm(zip(tasks, results), total=len(tasks), desc=desc,
                                           unit="slide", disable=not progress or not tasks):
            source = task[1]
            if status == "ok":
                plans[source.name] = result
                continue
            if strict:
                raise camelyon.SlideError(result)
            log.warning("skipping slide: %s", result)
            skipped.append({"slide": source.path, "error": result})
    finally:
        if pool is not None:
            pool.terminate()
            pool.join()
    return plans


# ------------------------------------------------------------------------------ discovery

def discover_slides(slide_dir: str, annotation_dir: str | None, config: NcamelyonConfig,
                    stage_labels: str | None = None, strict: bool = False,
                    skipped: list[dict] | None = None) -> list[SlideSource]:
    """Usable slides with their centre, split and annotation; bad ones go to `skipped`
    (or raise with `strict`)."""
    skipped = skipped if skipped is not None else []
    if annotation_dir is not None and not os.path.isdir(annotation_dir):
        raise camelyon.SlideError(f"{annotation_dir}: annotation directory not found")
    stages = camelyon.read_stage_labels(stage_labels) if stage_labels else None
    sources, names = [], {}
    for path in camelyon.find_slides(slide_dir):
        name = camelyon.slide_name(path)
        if name in names:
            raise camelyon.SlideError(f"{path}: a second slide named {name!r} (also "
                                      f"{names[name]}); slide names must be unique")
        names[name] = path
        xml = camelyon.annotation_path(path, annotation_dir)
        if xml is None and stages is not None and stages.get(name) != "negative":
            log.info("%s: no annotation and stage %r, not used", path, stages.get(name))
            continue
        try:
            center = camelyon.slide_center(path)
        except camelyon.SlideError as e:
            if strict:
                raise
            log.warning("skipping slide: %s", e)
            skipped.append({"slide": path, "error": str(e)})
            continue
        split = camelyon.split_of_center(center, config.val_centers, config.test_centers)
        sources.append(SlideSource(path, name, center, split, xml))
    return sources


# ------------------------------------------------------------------------------ records

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
            slide = camelyon.open_slide(crop.path)
            level = camelyon.slide_level(slide, self.config.level, crop.path)
            mask = None
            if crop.label:
                mask_path = os.path.join(self.cache_dir, f"{crop.slide}.lesions.mask.npz")
                mask = load_mask(mask_path)
            self._slides[crop.path] = (slide, level, mask)
        return self._slides[crop.path]

    def crop(self, split: str, index: int) -> tuple[np.ndarray, np.ndarray, CropSpec]:
        """RGB crop, lesion mask (bool) and spec of record `index` of `split`."""
        spec = self.crops[split][index]
        slide, level, mask = self._open(spec)
        c = self.config.crop_size
        image = camelyon.read_crop(slide, level, spec.x, spec.y, c, spec.path)
        lesion = mask.window(spec.y, spec.x, c, c) if mask is not None else np.zeros((c, c), bool)
        return image, lesion, spec

    def __call__(self, split: str, index: int) -> tuple[bytes, int]:
        image, lesion, spec = self.crop(split, index)
        bbox = None
        if spec.label:
            rows, cols = np.flatnonzero(lesion.any(1)), np.flatnonzero(lesion.any(0))
            bbox = (int(rows[0]), int(cols[0]), int(rows[-1]) + 1, int(cols[-1]) + 1)
        serialized = records.encode_example(
            image, label=spec.label, o2i=float(lesion.mean()), bbox=bbox,
            source_id=spec.source_id, mask=lesion.astype(np.uint8) * 255,
            png_strategy=zlib.Z_DEFAULT_STRATEGY)
        return serialized, spec.label


def _plan_negatives(sources: Sequence[SlideSource], needed: Mapping[str, int],
                    config: NcamelyonConfig, cache_dir: str, workers: int, strict: bool,
                    progress: bool, skipped: list[dict]) -> dict[str, dict]:
    """Negative windows per slide, enough to match `needed` per split where the slides allow.

    Each slide of a split first gets an even share; while a split falls short (a slide failed
    or has little tissue), the slides that filled their share are asked for more.
    """
    quotas = {}
    for split, count in needed.items():
        in_split = [s for s in sources if s.split == split]
        quotas.update({s.name: -(-count // len(in_split)) for s in in_split if count})
    plans: dict[str, dict] = {}
    todo = [s for s in sources if s.name in quotas]
    while todo:
        tasks = [("negatives", s, config, quotas[s.name], cache_dir) for s in todo]
        plans.update(_run_tasks(tasks, workers, strict, progress, "negative slides", skipped))
        todo = []
        for split, count in needed.items():
            done = [s for s in sources if s.split == split and s.name in plans]
            missing = count - sum(len(plans[s.name]["windows"]) for s in done)
            full = [s for s in done if len(plans[s.name]["windows"]) == quotas[s.name]]
            if missing > 0 and full:
                for s in full:
                    quotas[s.name] += -(-missing // len(full))
                todo += full
    return plans


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


# ------------------------------------------------------------------------------ summary

def split_summary(sources: Sequence[SlideSource], lesion_plans: Mapping[str, dict],
                  crops: Mapping[str, Sequence[CropSpec]]) -> dict[str, dict[str, int]]:
    """Per split: slides used, unique lesions (regions with a crop), positive/negative crops."""
    summary = {}
    for split in records.SPLITS:
        chosen = crops[split]
        lesions = {(c.slide, c.region) for c in chosen if c.label}
        summary[split] = {
            "lesion_slides": sum(s.split == split and s.name in lesion_plans for s in sources),
            "negative_slides": sum(s.split == split and s.annotation is None for s in sources),
            "unique_lesions": len(lesions),
            "positives": sum(c.label for c in chosen),
            "negatives": sum(1 - c.label for c in chosen)}
    return summary


def paper_tables(datasets: Sequence[Mapping[str, Any]]) -> tuple[list[list[str]],
                                                                   list[list[str]]]:
    """The paper's Tables 1 (unique lesions) and 2 (crops) over nCAMELYON dataset.json dicts.

    Rows are O2I bins (and "negative" in Table 2), columns crop size x split; each is a list of
    rows, the first two being headers. Missing combinations are "-".
    """
    sizes = sorted({d["params"]["crop_size"] for d in datasets})
    bins = [b for b in O2I_BINS if any(d["params"]["o2i_bin"] == b for d in datasets)]
    header = [["Crop size"] + [str(s) for s in sizes for _ in records.SPLITS],
              ["O2I ratio"] + [SPLIT_TITLES[s] for _ in sizes for s in records.SPLITS]]
    cell: dict[tuple, dict] = {(d["params"]["crop_size"], d["params"]["o2i_bin"]): d["summary"]
                               for d in datasets}

    def row(label: str, bin_name: str | None, key: str) -> list[str]:
        out = [label]
        for size in sizes:
            for split in records.SPLITS:
                if bin_name is None:  # negatives: one count per crop size (they match a bin)
                    values = [v[split][key] for (s, _), v in cell.items() if s == size]
                    out.append("/".join(str(v) for v in sorted(set(values))) or "-")
                else:
                    summary = cell.get((size, bin_name))
                    out.append(str(summary[split][key]) if summary else "-")
        return out

    table1 = header + [row(f"({b}]%", b, "unique_lesions") for b in bins]
    table2 = header + [row(f"({b}]%", b, "positives") for b in bins]
    table2.append(row("negative", None, "negatives"))
    return table1, table2


def markdown_table(rows: Sequence[Sequence[str]]) -> str:
    """A markdown table of header rows[0] (rows[1] becomes the first body row)."""
    lines = ["| " + " | ".join(rows[0]) + " |", "|" + "---|" * len(rows[0])]
    lines += ["| " + " | ".join(r) + " |" for r in rows[1:]]
    return "\n".join(lines)


def summary_text(meta: Mapping[str, Any]) -> str:
    """Markdown summary of one nCAMELYON data set: Tables 1 and 2 and the skipped slides."""
    params = meta["params"]
    table1, table2 = paper_tables([meta])
    lines = [f"# nCAMELYON: crop {params['crop_size']}, O2I bin ({params['o2i_bin']}] %, "
             f"level {params['level']}, seed {params['seed']}", "",
             "Table 1: unique lesions", "", markdown_table(table1), "",
             "Table 2: crops (balanced per split)", "", markdown_table(table2), ""]
    for split in records.SPLITS:
        info = meta["summary"][split]
        lines.append(f"- {split}: {info['lesion_slides']} lesion slides, "
                     f"{info['negative_slides']} negative slides, {info['positives']} positive "
                     f"and {info['negatives']} negative crops")
    if meta["skipped"]:
        lines += ["", "Skipped slides:", ""] + [f"- {s['error']}" for s in meta["skipped"]]
    return "\n".join(lines) + "\n"


def _write_summary(output_dir: str, meta: Mapping[str, Any]) -> None:
    text = summary_text(meta)
    rows = ["split,lesion_slides,negative_slides,unique_lesions,positives,negatives"]
    rows += [",".join([split] + [str(v[k]) for k in ("lesion_slides", "negative_slides",
                                                     "unique_lesions", "positives",
                                                     "negatives")])
             for split, v in ((s, meta["summary"][s]) for s in records.SPLITS)]
    for name, content in ((SUMMARY_MD, text), (SUMMARY_CSV, "\n".join(rows) + "\n")):
        atomic.write_text(os.path.join(output_dir, name), content)


# ------------------------------------------------------------------------------ build

def build_ncamelyon(slide_dir: str, output_dir: str, config: NcamelyonConfig | None = None, *,
                    annotation_dir: str | None = None, stage_labels: str | None = None,
                    workers: int = 1, strict: bool = False, overwrite: bool = False,
                    progress: bool = True) -> dict[str, Any]:
    """Extracts an nCAMELYON data set (TFRecords, dataset.json, summary.md/.csv); returns its
    metadata (with "summary" per split and "skipped" slides).

    annotation_dir: folder of <slide name>.xml (default: beside each slide); stage_labels:
    CAMELYON17 stage_labels.csv to take negatives only from slides labelled negative.
    """
    config = config or NcamelyonConfig()
    cache_dir = os.path.join(output_dir, CACHE_DIR)
    os.makedirs(cache_dir, exist_ok=True)
    skipped: list[dict] = []
    sources = discover_slides(slide_dir, annotation_dir, config, stage_labels, strict, skipped)

    lesion_sources = [s for s in sources if s.annotation is not None]
    lesion_plans = _run_tasks([("lesions", s, config, None, cache_dir) for s in lesion_sources],
                              workers, strict, progress, "lesion slides", skipped)
    positives: dict[str, list[CropSpec]] = {s: [] for s in records.SPLITS}
    for source in lesion_sources:
        for region in lesion_plans.get(source.name, {"regions": []})["regions"]:
            for k, (x, y, fraction) in enumerate(region["windows"]):
                positives[source.split].append(CropSpec(
                    source.name, source.path, 1, x, y, region["index"], k, fraction))

    negative_sources = [s for s in sources if s.annotation is None]
    needed = {split: len(v) for split, v in positives.items()}
    negative_plans = _plan_negatives(negative_sources, needed, config, cache_dir, workers,
                                     strict, progress, skipped)
    crops = {}
    for split in records.SPLITS:
        plans = [(s, negative_plans[s.name]) for s in negative_sources
                 if s.split == split and s.name in negative_plans]
        crops[split] = _interleave(positives[split], _allocate(plans, len(positives[split])))

    failed = {k["slide"] for k in skipped}
    used = [s for s in sources if s.path not in failed]
    summary = split_summary(used, lesion_plans, crops)
    if not any(crops.values()):
        raise records.DatasetError(
            f"{slide_dir}: no crop of size {config.crop_size} with O2I in ({config.o2i_bin}] % "
            f"found in {len(lesion_plans)} lesion slides ({len(skipped)} skipped)")
    for split, info in summary.items():
        if info["negatives"] < info["positives"]:
            log.warning("%s: only %d negatives for %d positives (too few negative slides or too "
                        "little tissue)", split, info["negatives"], info["positives"])
    plan_digest = hashlib.sha256(json.dumps(
        {s: [dataclasses.astuple(c) for c in v] for s, v in crops.items()}).encode()).hexdigest()
    params = {**config.to_dict(), "plan_sha256": plan_digest}
    params.pop("num_shards")
    extra = {"slide_dir": os.path.abspath(slide_dir),
             "annotation_dir": annotation_dir and os.path.abspath(annotation_dir),
             "summary": summary, "skipped": skipped,
             "slides": {s.name: {"split": s.split, "center": s.center,
                                 "lesions": s.annotation is not None} for s in used}}
    writer = CropWriter(crops, config, cache_dir)
    meta = records.write_dataset(
        output_dir, kind="ncamelyon", params=params,
        image={"height": config.crop_size, "width": config.crop_size, "channels": 3},
        split_sizes={s: len(crops[s]) for s in records.SPLITS}, make_example=writer,
        num_shards=config.num_shards, workers=workers, overwrite=overwrite, progress=progress,
        extra=extra)
    _write_summary(output_dir, meta)
    return meta
