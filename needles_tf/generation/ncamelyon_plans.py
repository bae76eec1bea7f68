"""Per-slide planning of nCAMELYON crops, cached per slide so an interrupted run resumes.

Lesion slides: the lesion mask at the pyramid level, its regions and each region's kept windows
(ncamelyon.py, step 2). Negative slides: tissue windows, as many as the split needs (step 3).
Every random draw is keyed by (seed, slide name, stream), so plans do not depend on the number
of workers. A plan is cached under <output_dir>/slides/ with a key of the slide and annotation
files' size and mtime and the parameters; the lesion mask is stored beside it (bit-packed).
"""

from __future__ import annotations

import dataclasses
import io
import json
import logging
import os
import zlib
from concurrent.futures.process import BrokenProcessPool
from typing import Any, Mapping, Sequence

import numpy as np

from needles_tf import atomic
from needles_tf.generation import camelyon, wsi
from needles_tf.generation.camelyon import SlideSource
from needles_tf.generation.ncamelyon_config import NcamelyonConfig
from needles_tf.generation.workers import map_in_processes, worker_died

CACHE_VERSION = 1

log = logging.getLogger(__name__)


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
    slide = wsi.open_slide(source.path)
    try:
        level = config.grid(slide, source.path)
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
    slide = wsi.open_slide(source.path)
    try:
        level = config.grid(slide, source.path)
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
                green = float(wsi.read_crop(slide, level, x, y, c, source.path)[..., 1]
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


def run_slide_tasks(tasks: list[tuple], workers: int, strict: bool, progress: bool, desc: str,
               skipped: list[dict]) -> dict[str, dict]:
    """Runs per-slide tasks (in parallel); returns plans by slide name, records failures."""
    from tqdm.auto import tqdm

    plans = {}
    results = map_in_processes(_plan_task, tasks, min(workers, len(tasks)))
    try:
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
    except BrokenProcessPool:
        raise camelyon.SlideError(worker_died(
            f"planning the {desc}", "the slides planned so far are cached")) from None
    finally:
        results.close()
    return plans


def plan_negatives(sources: Sequence[SlideSource], needed: Mapping[str, int],
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
        plans.update(run_slide_tasks(tasks, workers, strict, progress, "negative slides", skipped))
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
