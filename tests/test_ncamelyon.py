"""nCAMELYON extraction on a synthetic slide tree: bins, whole regions, negatives, splits, tables,
bad inputs, determinism and the tf.data pipeline."""

import glob
import os
import re
import subprocess
import sys
from collections import Counter

import numpy as np
import pytest
import tensorflow as tf

from needles_tf.data import metadata, schema
from needles_tf.generation import (
    camelyon,
    ncamelyon,
    ncamelyon_config,
    ncamelyon_tables,
    slides,
    wsi,
)
from needles_tf.input import make_dataset

CROP = 64
FLAGS_DIR = os.path.join(os.path.dirname(__file__), "..", "flags", "ncamelyon")
SOURCE_RE = re.compile(r"^(\S+)/(region_(\d+)|negative)/crop_(\d+) x=(\d+) y=(\d+)$")


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("slides"))
    slides.make_synthetic_slides(out, num_patients=10, seed=0, size=2048)
    return out, os.path.join(out, "lesion_annotations")


def _config(**kw):
    return ncamelyon_config.NcamelyonConfig(**{"crop_size": CROP, "o2i_bin": "1-10",
                                               "crops_per_region": 12, "num_shards": 2, **kw})


@pytest.fixture(scope="module")
def built(tree, tmp_path_factory):
    slide_dir, annotation_dir = tree
    out = str(tmp_path_factory.mktemp("ncam"))
    meta = ncamelyon.build_ncamelyon(slide_dir, out, _config(), annotation_dir=annotation_dir,
                                     progress=False)
    return out, meta


def _records(data_dir):
    out = {}
    for split in metadata.SPLITS:
        rows = []
        for path in metadata.shard_paths(data_dir, split):
            for serialized in tf.data.TFRecordDataset(path):
                p = schema.Decoder().decode(serialized)
                rows.append({
                    "image": tf.io.decode_png(p["image/encoded"]).numpy(),
                    "mask": tf.io.decode_png(p["object/mask"]).numpy()[..., 0] > 0,
                    "label": int(p["label"]), "o2i": float(p["o2i"]),
                    "bbox": p["object/bbox"].numpy().tolist(),
                    "source": SOURCE_RE.match(p["source/id"].numpy().decode())})
        out[split] = rows
    return out


@pytest.fixture(scope="module")
def rows(built):
    return _records(built[0])


@pytest.fixture(scope="module")
def masks(tree):
    """Lesion mask and regions at level 3 of every lesion slide, recomputed from the XML."""
    slide_dir, annotation_dir = tree
    out = {}
    for path in camelyon.find_slides(slide_dir):
        xml = camelyon.annotation_path(path, annotation_dir)
        if xml:
            slide = wsi.open_slide(path)
            mask = camelyon.rasterize(camelyon.parse_asap_xml(xml),
                                      wsi.level_at_index(slide, 3, path))
            out[camelyon.slide_name(path)] = (mask, camelyon.lesion_regions(mask))
    return out


def test_positives_lie_in_their_bin_and_hold_their_whole_region(rows, masks):
    lo, hi = ncamelyon_config.O2I_BINS["1-10"]
    positives = [r for split in rows.values() for r in split if r["label"] == 1]
    assert len(positives) > 50
    for r in positives:
        slide, _, region, _, x, y = r["source"].groups()
        x, y = int(x), int(y)
        mask, regions = masks[slide]
        expected = mask.window(y, x, CROP, CROP)
        assert np.array_equal(r["mask"], expected)
        assert lo < expected.mean() <= hi and r["o2i"] == pytest.approx(expected.mean())
        ymin, xmin, ymax, xmax = regions[int(region)].box
        assert x <= xmin and xmax <= x + CROP and y <= ymin and ymax <= y + CROP
        assert 0 <= x <= mask.width - CROP and 0 <= y <= mask.height - CROP
        rr, cc = np.nonzero(r["mask"])
        assert r["bbox"] == [rr.min(), cc.min(), rr.max() + 1, cc.max() + 1]
        assert r["image"].shape == (CROP, CROP, 3)


def test_negatives_have_no_lesion_and_enough_tissue(rows, masks):
    negatives = [r for split in rows.values() for r in split if r["label"] == 0]
    assert negatives
    for r in negatives:
        assert r["source"].group(2) == "negative" and r["source"].group(1) not in masks
        assert not r["mask"].any() and r["o2i"] == 0 and r["bbox"] == []
        assert r["image"][..., 1].mean() < 200


def test_split_by_centre_and_no_slide_in_two_splits(built, rows):
    _, meta = built
    seen = {}
    for split, items in rows.items():
        for r in items:
            seen.setdefault(r["source"].group(1), set()).add(split)
    assert all(len(s) == 1 for s in seen.values())
    for name, splits in seen.items():
        center = int(name.split("_")[1]) // 20
        assert splits == {{3: "val", 4: "test"}.get(center, "train")}
        assert meta["slides"][name]["split"] in splits
    assert {s for v in seen.values() for s in v} == {"train", "val", "test"}


def test_counts_and_tables_agree_with_the_records(built, rows):
    out, meta = built
    saved = metadata.read_metadata(out)
    for split, items in rows.items():
        labels = Counter(r["label"] for r in items)
        assert labels[1] == labels[0] > 0  # balanced per split
        info = saved["splits"][split]
        assert (info["count"], info["positives"]) == (len(items), labels[1])
        summary = saved["summary"][split]
        assert (summary["positives"], summary["negatives"]) == (labels[1], labels[0])
        lesions = {(r["source"].group(1), r["source"].group(3)) for r in items if r["label"]}
        assert summary["unique_lesions"] == len(lesions)
    table1, table2 = ncamelyon_tables.paper_tables([saved])
    assert table1[2] == ["(1-10]%"] + [str(saved["summary"][s]["unique_lesions"])
                                        for s in metadata.SPLITS]
    assert table2[3] == ["negative"] + [str(saved["summary"][s]["negatives"])
                                         for s in metadata.SPLITS]
    text = open(os.path.join(out, ncamelyon_tables.SUMMARY_MD)).read()
    assert ncamelyon_tables.markdown_table(table2) in text
    csv_rows = open(os.path.join(out, ncamelyon_tables.SUMMARY_CSV)).read().splitlines()
    assert csv_rows[1].split(",")[0] == "train"
    assert csv_rows[1].split(",")[-2:] == [str(saved["summary"]["train"]["positives"])] * 2


def test_records_feed_make_dataset_as_rgb(built):
    out, meta = built
    images, labels = next(iter(make_dataset(out, "train", batch_size=8, training=True)))
    assert images.shape == (8, CROP, CROP, 3) and images.dtype == tf.float32
    assert set(labels.numpy()) <= {0, 1}


def test_deterministic_across_workers_and_resumable(tree, built, tmp_path):
    slide_dir, annotation_dir = tree
    out, meta = built
    again = ncamelyon.build_ncamelyon(slide_dir, str(tmp_path), _config(),
                                      annotation_dir=annotation_dir, workers=2, progress=False)
    digest = {s: [x["sha256"] for x in v["shards"]] for s, v in meta["splits"].items()}
    assert {s: [x["sha256"] for x in v["shards"]] for s, v in again["splits"].items()} == digest
    # Delete a shard and one slide's cached plan: a re-run redoes just those.
    os.remove(glob.glob(os.path.join(str(tmp_path), "val-*.tfrecord"))[0])
    os.remove(os.path.join(str(tmp_path), "slides", "patient_060_node_0.lesions.json"))
    repaired = ncamelyon.build_ncamelyon(slide_dir, str(tmp_path), _config(),
                                         annotation_dir=annotation_dir, progress=False)
    assert {s: [x["sha256"] for x in v["shards"]] for s, v in repaired["splits"].items()} == digest


def _bad_tree(tree, root):
    """Two good slides plus one of every bad input."""
    slide_dir, annotation_dir = tree
    ann = root / "ann"
    os.makedirs(ann)
    for center in (0, 1, 2):
        os.makedirs(root / f"center_{center}")
    good = os.path.join(slide_dir, "center_0", "patient_000_node_0.tif")
    os.symlink(good, root / "center_0" / "patient_000_node_0.tif")
    os.symlink(os.path.join(annotation_dir, "patient_000_node_0.xml"),
               ann / "patient_000_node_0.xml")
    os.symlink(os.path.join(slide_dir, "center_0", "patient_001_node_0.tif"),
               root / "center_0" / "patient_001_node_0.tif")
    (root / "center_1" / "patient_020_node_0.tif").write_bytes(b"II*\x00not a slide")
    os.symlink(good, root / "center_0" / "patient_002_node_0.tif")
    (ann / "patient_002_node_0.xml").write_text("<ASAP_Annotations><Annotations>")
    os.symlink(good, root / "center_2" / "patient_040_node_0.tif")
    (ann / "patient_040_node_0.xml").write_text(slides.asap_xml([slides.SyntheticLesion(
        np.array([[100.0, 100.0], [2100.0, 100.0], [100.0, 300.0]]), "metastases")]))
    os.symlink(good, root / "tumor_001.tif")
    os.symlink(good, root / "center_1" / "patient_060_node_0.tif")  # centre 3 by name
    return str(root), str(ann)


EXPECTED_ERRORS = [
    r"center_0/patient_002_node_0.tif: .*|.*patient_002_node_0\.xml: malformed XML",
    r"patient_040_node_0\.xml: annotation 'Annotation 0' \(metastases\) reaches "
    r"\(100\.\.2100, 100\.\.300\), outside the 2048x2048 slide",
    r"center_1/patient_020_node_0\.tif: openslide cannot open it",
    r"tumor_001\.tif: cannot tell the slide's centre",
    r"center_1/patient_060_node_0\.tif: slide of patient 60 \(centre 3 in CAMELYON17 naming\) "
    r"lies in folder center_1",
]


def test_bad_inputs_are_reported_and_skipped(tree, tmp_path):
    slide_dir, annotation_dir = _bad_tree(tree, tmp_path / "bad")
    out = str(tmp_path / "out")
    meta = ncamelyon.build_ncamelyon(slide_dir, out, _config(), annotation_dir=annotation_dir,
                                     progress=False)
    errors = [s["error"] for s in meta["skipped"]]
    assert len(errors) == len(EXPECTED_ERRORS)
    for pattern in EXPECTED_ERRORS:
        assert sum(bool(re.search(pattern, e)) for e in errors) == 1, (pattern, errors)
    assert sorted(meta["slides"]) == ["patient_000_node_0", "patient_001_node_0"]
    assert meta["splits"]["train"]["positives"] == meta["splits"]["train"]["negatives"] > 0
    assert "Skipped slides" in open(os.path.join(out, ncamelyon_tables.SUMMARY_MD)).read()
    # strict stops at the first bad slide, in the binary too (exit message names the file).
    with pytest.raises(camelyon.SlideError, match="tumor_001.tif|patient_060"):
        ncamelyon.build_ncamelyon(slide_dir, str(tmp_path / "strict"), _config(),
                                  annotation_dir=annotation_dir, strict=True, progress=False)
    done = subprocess.run(
        [sys.executable, "-m", "needles_tf.bin.make_ncamelyon", f"--slide_dir={slide_dir}",
         f"--annotation_dir={annotation_dir}", f"--output_dir={tmp_path / 'cli'}",
         "--crop_size=64", "--strict", "--workers=1", "--noprogress"],
        capture_output=True, text=True, env={**os.environ, "PYTHONPATH": os.getcwd()})
    assert done.returncode == 1
    assert re.search(r"needles-make-ncamelyon: error: \S+(tumor_001|patient_060)", done.stderr)


def test_stage_labels_keep_unannotated_positive_slides_out(tree, tmp_path):
    slide_dir, annotation_dir = tree
    labels = tmp_path / "stage_labels.csv"
    labels.write_text("patient,stage\npatient_001.zip,pN1\npatient_001_node_0.tif,itc\n"
                      "patient_021_node_0.tif,negative\n")
    sources = camelyon.discover_slides(slide_dir, annotation_dir, stage_labels=str(labels))
    negatives = sorted(s.name for s in sources if s.annotation is None)
    assert "patient_001_node_0" not in negatives and "patient_021_node_0" in negatives


def test_config_and_presets():
    with pytest.raises(ValueError, match="o2i_bin must be one of"):
        ncamelyon_config.NcamelyonConfig(o2i_bin="5-10")
    presets = sorted(os.listdir(FLAGS_DIR))
    assert len(presets) == len(ncamelyon_config.CROP_SIZES) * len(ncamelyon_config.O2I_BINS)
    for name in presets:
        flags = dict(re.findall(r"^--(\w+)=(\S+)$", open(os.path.join(FLAGS_DIR, name)).read(),
                                re.M))
        assert int(flags["crop_size"]) in ncamelyon_config.CROP_SIZES
        assert flags["o2i_bin"] in ncamelyon_config.O2I_BINS and flags["level"] == "3"
        assert name == f"crop{flags['crop_size']}_o2i_{flags['o2i_bin']}.cfg"
