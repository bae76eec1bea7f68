"""Synthetic CAMELYON slides: openslide reads them, annotations match the pixels, both XML styles
parse, and CAMELYON16 exclusions are cut out of the lesion mask."""

import hashlib
import os
import subprocess
import sys

import numpy as np
import pytest

from needles_tf.generation import camelyon, slides, wsi

SIZE = 1024


@pytest.fixture(scope="module")
def tree17(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("c17"))
    return out, slides.make_synthetic_slides(out, num_patients=6, seed=1, size=SIZE)


@pytest.fixture(scope="module")
def tree16(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("c16"))
    return out, slides.make_synthetic_slides(out, num_patients=2, seed=2, size=SIZE,
                                             xml_style="camelyon16")


def test_tree_layout_centres_and_pyramid(tree17):
    out, paths = tree17
    names = [os.path.relpath(p, out) for p in paths]
    assert names == ["center_0/patient_000_node_0.tif", "center_0/patient_001_node_0.tif",
                     "center_1/patient_020_node_0.tif", "center_2/patient_040_node_0.tif",
                     "center_3/patient_060_node_0.tif", "center_4/patient_080_node_0.tif"]
    xmls = sorted(os.listdir(os.path.join(out, "lesion_annotations")))
    # The 6th patient (second of centre 0) has no lesions.
    assert xmls == [f"patient_{p:03d}_node_0.xml" for p in (0, 20, 40, 60, 80)]
    for path in paths:
        assert camelyon.slide_center(path) == int(path.split("center_")[1][0])
        slide = wsi.open_slide(path)
        assert slide.properties["openslide.vendor"] == "generic-tiff"
        assert slide.level_dimensions[0] == (SIZE, SIZE)
        assert slide.level_downsamples == (1.0, 2.0, 4.0, 8.0, 16.0)
        slide.close()


def test_lesion_pixels_look_different_from_tissue_and_background(tree17):
    out, paths = tree17
    path = paths[0]
    slide = wsi.open_slide(path)
    level = wsi.level_at_index(slide, 3, path)
    image = wsi.read_crop(slide, level, 0, 0, level.width, path)
    annotations = camelyon.parse_asap_xml(camelyon.annotation_path(
        path, os.path.join(out, "lesion_annotations")))
    lesion = camelyon.rasterize(annotations, level).window(0, 0, level.height, level.width)
    assert lesion.sum() > 0
    green = image[..., 1].astype(float)
    background = green > 235
    assert background.mean() > 0.2 and (~background & ~lesion).mean() > 0.2
    tissue_green = green[~background & ~lesion].mean()
    assert green[lesion].mean() < tissue_green - 20 < 200  # lesions are darker purple
    assert tissue_green < 200  # tissue passes the negatives' background rule


def test_generation_is_deterministic(tmp_path, tree17):
    _, paths = tree17
    again = slides.make_synthetic_slides(str(tmp_path), num_patients=1, seed=1, size=SIZE)
    digest = [hashlib.sha256(open(p, "rb").read()).hexdigest() for p in (paths[0], again[0])]
    assert digest[0] == digest[1]
    other = slides.make_synthetic_slides(str(tmp_path / "b"), num_patients=1, seed=3, size=SIZE)
    assert open(other[0], "rb").read() != open(paths[0], "rb").read()


def test_camelyon17_and_camelyon16_xml_parse(tree17, tree16):
    out17, paths17 = tree17
    a17 = camelyon.parse_asap_xml(os.path.join(out17, "lesion_annotations",
                                               "patient_000_node_0.xml"))
    assert a17.lesions and not a17.exclusions
    assert {p.group for p in a17.lesions} == {"metastases"}
    out16, _ = tree16
    path16 = os.path.join(out16, "lesion_annotations", "patient_000_node_0.xml")
    a16 = camelyon.parse_asap_xml(path16)
    assert {p.group for p in a16.lesions} == {"_0", "_1"} and len(a16.exclusions) == 1
    assert a16.exclusions[0].group == "_2"
    with pytest.raises(camelyon.SlideError, match=r"patient_000_node_0\.xml: no lesion polygon "
                       r"in groups \['metastases'\] \(groups found: \['_0', '_1', '_2'\]\)"):
        camelyon.parse_asap_xml(path16, lesion_groups=("metastases",))


def test_camelyon16_exclusion_is_removed_from_the_mask(tree16):
    out, paths = tree16
    path = paths[0]
    slide = wsi.open_slide(path)
    level = wsi.level_at_index(slide, 2, path)
    xml = camelyon.annotation_path(path, os.path.join(out, "lesion_annotations"))
    annotations = camelyon.parse_asap_xml(xml)
    mask = camelyon.rasterize(annotations, level)
    hole = annotations.exclusions[0].points.mean(0) / level.downsample  # centre of the hole
    assert not mask.window(int(hole[1]), int(hole[0]), 1, 1)[0, 0]
    without = camelyon.rasterize(camelyon.Annotations(xml, annotations.lesions, ()), level)
    assert without.window(int(hole[1]), int(hole[0]), 1, 1)[0, 0]
    assert without.pixels.sum() > mask.pixels.sum()
    # The hole is normal tissue in the pixels too: lighter than the lesion around it.
    image = wsi.read_crop(slide, level, int(hole[0]) - 2, int(hole[1]) - 2, 5, path)
    assert image[..., 1].mean() > 130


def test_make_slides_binary(tmp_path):
    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    done = subprocess.run([sys.executable, "-m", "needles_tf.bin.make_slides",
                           f"--output_dir={tmp_path}", "--num_patients=1", "--size=512",
                           "--levels=3", "--xml_style=camelyon16", "--scanner_mpp=0.5"],
                          capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr
    assert os.path.isfile(tmp_path / "center_0" / "patient_000_node_0.tif")
    assert os.path.isfile(tmp_path / "lesion_annotations" / "patient_000_node_0.xml")
    slide = wsi.open_slide(str(tmp_path / "center_0" / "patient_000_node_0.tif"))
    assert np.asarray(slide.level_dimensions).tolist() == [[512, 512], [256, 256], [128, 128]]
    assert float(slide.properties["openslide.mpp-x"]) == 0.5
