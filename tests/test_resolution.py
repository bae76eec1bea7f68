"""Slides read at a physical resolution (generation/wsi.py): the same tissue from two scanners of
different base resolution gives the same crops at one mpp; a mixed cohort extracts at one scale;
a slide without resolution is skipped; a split without negatives stops extraction."""

import json
import logging
import os

import numpy as np
import pytest

from needles_tf.data import metadata
from needles_tf.generation import camelyon, ncamelyon, ncamelyon_config, slides, wsi

SIZE = 1024  # level-0 pixels of the 0.25 um scan; the 0.4 um scan of it has 640
MPP = 2.0    # the target: level 3 of the 0.25 um scan as it is, level 2 of the 0.4 um resampled


@pytest.fixture(scope="module")
def scans(tmp_path_factory):
    """One rendered slide written by scanners of 0.25 and 0.4 um per pixel, and without
    resolution: {name: (path, annotations)}."""
    out = tmp_path_factory.mktemp("scans")
    image, lesions = slides.render_slide(np.random.default_rng(7), SIZE, (4, 6))
    found = {}
    for name, mpp in (("a", 0.25), ("b", 0.4), ("none", None)):
        path = str(out / f"{name}.tif")
        moved = slides.write_slide(path, image, lesions, 0.25, mpp, levels=4)
        xml = str(out / f"{name}.xml")
        open(xml, "w").write(slides.asap_xml(moved))
        found[name] = (path, camelyon.parse_asap_xml(xml))
    return found


def _grid(scans, name, mpp=MPP, **kw):
    path = scans[name][0]
    slide = wsi.open_slide(path)
    return slide, wsi.level_at_mpp(slide, mpp, path, **kw)


def test_resolution_is_read_and_the_level_at_or_finer_than_the_target_chosen(scans):
    slide, a = _grid(scans, "a")
    assert wsi.slide_mpp(slide, "a") == pytest.approx(0.25)
    assert (a.index, a.scale, a.width, a.mpp) == (3, 1.0, 128, pytest.approx(MPP))
    slide, b = _grid(scans, "b")
    assert wsi.slide_mpp(slide, "b") == pytest.approx(0.4)
    # 2.0 / 0.4 = 5: level 2 (downsample 4) resampled by 1.25
    assert (b.index, b.scale, b.width, b.height) == (2, pytest.approx(1.25), 128, 128)
    _, fine = _grid(scans, "a", mpp=0.3)
    assert (fine.index, fine.scale, fine.width) == (0, pytest.approx(1.2), int(SIZE / 1.2))
    with pytest.raises(wsi.SlideError, match=r"a\.tif: scanned at 0\.25 um per pixel, coarser "
                       r"than the 0\.2 asked for"):
        _grid(scans, "a", mpp=0.2)
    with pytest.raises(wsi.SlideError, match=r"none\.tif: no resolution .*--assume_mpp"):
        _grid(scans, "none")
    _, assumed = _grid(scans, "none", assume_mpp=0.25)
    assert (assumed.index, assumed.width) == (3, 128)
    assert wsi.magnification_mpp(20) == 0.5


def test_the_same_tissue_from_two_scanners_gives_the_same_crops(scans):
    """Same physical size, lesion fraction and (to the resampling's blur) pixels."""
    crop = 32
    slide_a, a = _grid(scans, "a")
    slide_b, b = _grid(scans, "b")
    mask_a = camelyon.rasterize(scans["a"][1], a)
    mask_b = camelyon.rasterize(scans["b"][1], b)
    regions_a, regions_b = camelyon.lesion_regions(mask_a), camelyon.lesion_regions(mask_b)
    assert len(regions_a) == len(regions_b) >= 4
    compared = 0
    for ra, rb in zip(regions_a, regions_b):
        assert np.abs(np.subtract(ra.box, rb.box)).max() <= 1
        assert rb.area == pytest.approx(ra.area, rel=0.05, abs=2)
        ymin, xmin, ymax, xmax = ra.box
        if ymax - ymin > crop or xmax - xmin > crop:
            continue
        y, x = max(0, ymin - 4), max(0, xmin - 4)  # a window holding the whole region
        fractions = [m.window(y, x, crop, crop).mean() for m in (mask_a, mask_b)]
        assert fractions[1] == pytest.approx(fractions[0], rel=0.05, abs=0.002)
        pixels = [wsi.read_crop(s, g, x, y, crop).astype(float)
                  for s, g in ((slide_a, a), (slide_b, b))]
        assert pixels[0].shape == pixels[1].shape == (crop, crop, 3)
        blurred = [p.reshape(8, 4, 8, 4, 3).mean((1, 3)) for p in pixels]  # 8 um blocks
        assert np.abs(blurred[0] - blurred[1]).mean() < 3  # of 255
        compared += 1
    assert compared >= 2


def test_resampled_tiles_put_side_by_side_are_the_grid(scans):
    slide, b = _grid(scans, "b")
    whole = wsi.read_region(slide, b, 0, 0, 96, 80).astype(int)
    tiled = np.concatenate([np.concatenate([wsi.read_region(slide, b, x, y, 48, 40)
                                            for x in (0, 48)], axis=1) for y in (0, 40)])
    assert np.abs(whole - tiled).max() <= 1


@pytest.fixture(scope="module")
def cohort(tmp_path_factory, scans):
    """Ten patients from two scanners (0.25, 0.4 um) and an eleventh slide without resolution."""
    out = str(tmp_path_factory.mktemp("cohort"))
    slides.make_synthetic_slides(out, num_patients=10, seed=3, size=SIZE, levels=4,
                                 scanner_mpp=(0.25, 0.4))
    os.link(scans["none"][0], os.path.join(out, "center_0", "patient_010_node_0.tif"))
    return out


def _config(**kw):
    return ncamelyon_config.NcamelyonConfig(**{"crop_size": 32, "o2i_bin": "1-10", "mpp": MPP,
                                               "crops_per_region": 8, "num_shards": 1, **kw})


def test_a_mixed_cohort_is_extracted_at_one_resolution(cohort, tmp_path, caplog):
    with caplog.at_level(logging.WARNING):
        meta = ncamelyon.build_ncamelyon(cohort, str(tmp_path), _config(),
                                         annotation_dir=os.path.join(cohort, "lesion_annotations"),
                                         progress=False)
    assert meta["params"]["crop_mpp"] == MPP and meta["params"]["mpp"] == MPP
    read = {name: info for name, info in meta["slides"].items() if info["mpp"] is not None}
    assert {round(info["mpp"], 3) for info in read.values()} == {0.25, 0.4}
    assert {info["read_level"] for info in read.values()} == {2, 3}
    assert all(info["crop_mpp"] == pytest.approx(MPP) for info in read.values())
    assert all(meta["summary"][s]["positives"] > 0 for s in metadata.SPLITS)
    # the slide without resolution: skipped, named, with the flag that helps, in one line
    assert [s["slide"] for s in meta["skipped"]] == [
        os.path.join(cohort, "center_0", "patient_010_node_0.tif")]
    lines = [r.getMessage() for r in caplog.records if "patient_010" in r.getMessage()]
    assert len(lines) == 1 and "\n" not in lines[0] and "--assume_mpp" in lines[0]
    written = json.load(open(tmp_path / metadata.METADATA_FILE))
    assert written["params"]["crop_mpp"] == MPP and written["slides"] == meta["slides"]


def test_a_split_without_negatives_stops_unless_allowed(cohort, tmp_path):
    stages = tmp_path / "stage_labels.csv"  # centre 3's lesion-free slide is no negative here
    rows = ["patient,stage"] + [
        f"{camelyon.slide_name(p)}.tif,{'itc' if 'patient_061' in p else 'negative'}"
        for p in camelyon.find_slides(cohort)]
    stages.write_text("\n".join(rows) + "\n")
    kw = dict(annotation_dir=os.path.join(cohort, "lesion_annotations"), stage_labels=str(stages),
              progress=False)
    with pytest.raises(metadata.DatasetError, match=r"split 'val' has \d+ positives and no "
                       r"negatives \(0 negative slides in centres 3, 1 lesion slides\).*"
                       r"--allow_missing_negatives"):
        ncamelyon.build_ncamelyon(cohort, str(tmp_path / "a"), _config(), **kw)
    meta = ncamelyon.build_ncamelyon(cohort, str(tmp_path / "b"), _config(),
                                     allow_missing_negatives=True, **kw)
    assert meta["summary"]["val"]["negatives"] == 0 < meta["summary"]["val"]["positives"]
