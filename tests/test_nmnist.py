"""nMNIST composition: counts, O2I of the presets, needle placement, determinism."""

import os
import re

import numpy as np
import pytest
import tensorflow as tf
from mnist_files import write_idx_set

from needles_tf.data import metadata, schema
from needles_tf.generation import mnist, nmnist

FLAGS_DIR = os.path.join(os.path.dirname(__file__), "..", "flags", "nmnist")


@pytest.fixture(scope="module")
def embedded():
    return mnist.load_mnist("embedded")


def test_counts_follow_the_rule_on_an_idx_source(tmp_path):
    labels = write_idx_set(str(tmp_path))
    data = mnist.load_mnist(f"idx:{tmp_path}")
    composer = nmnist.NmnistComposer(data, canvas_size=28, num_clutter=0,
                                     duplicates={"train": 1, "val": 2, "test": 2})
    threes = {"train": np.sum(labels["train"][5000:] == 3),
              "val": np.sum(labels["train"][:5000] == 3), "test": np.sum(labels["t10k"] == 3)}
    for split, dup in (("train", 1), ("val", 2), ("test", 2)):
        assert composer.split_size(split) == 2 * threes[split] * dup
    doubled = nmnist.NmnistComposer(data, 28, 0, duplicates={"train": 2, "val": 2, "test": 2})
    assert doubled.split_size("train") == 2 * composer.split_size("train")


def test_paper_counts_from_the_number_of_threes():
    # Full MNIST holds 5,638 / 493 / 1,010 threes in train / val / test (6,131 in the training
    # set, 493 of them among its first 5,000 images).
    threes = {"train": 5638, "val": 493, "test": 1010}
    sizes = {s: nmnist.split_size(np.full(n, 3), 3, nmnist.DEFAULT_DUPLICATES[s])
             for s, n in threes.items()}
    assert sizes == {"train": 11276, "val": 1972, "test": 4040}
    assert nmnist.split_size(np.full(5638, 3), 3, 2) == 22552


@pytest.mark.parametrize("o2i_name,canvas,clutter", [
    ("19.1", 64, 2), ("4.8", 128, 5), ("1.2", 256, 25), ("0.3", 512, 100), ("0.075", 1024, 400)])
def test_presets_have_the_papers_o2i(embedded, o2i_name, canvas, clutter):
    text = open(os.path.join(FLAGS_DIR, f"o2i_{o2i_name}.cfg")).read()
    flags = dict(re.findall(r"^--(\w+)=(\S+)$", text, re.M))
    assert (int(flags["canvas_size"]), int(flags["num_clutter"])) == (canvas, clutter)
    assert f"{100 * nmnist.o2i(canvas):.2g}" == f"{float(o2i_name):.2g}"
    composer = nmnist.NmnistComposer(embedded, canvas, clutter)
    serialized, label = composer("test", 0)
    parsed = schema.Decoder().decode(serialized)
    assert label == 1 and parsed["o2i"].numpy() == pytest.approx(28 * 28 / canvas ** 2)
    assert tf.io.decode_png(parsed["image/encoded"]).shape == (canvas, canvas, 1)
    assert parsed["clutter/count"].numpy() == clutter


def test_each_positive_has_exactly_one_needle_in_its_box(embedded):
    canvas = 48  # crowded: 12 digits on 48x48, so overlaps and saturation happen
    composer = nmnist.NmnistComposer(embedded, canvas, num_clutter=11, seed=5)
    labels = {s: embedded[s].labels for s in metadata.SPLITS}
    for split in metadata.SPLITS:
        for index in range(0, 40):
            serialized, label = composer(split, index)
            parsed = schema.Decoder().decode(serialized)
            image = tf.io.decode_png(parsed["image/encoded"]).numpy()[:, :, 0]
            plan = composer.plan(split, index)
            is_needle = labels[split][plan.rows] == 3
            assert len(plan.rows) == 12 and plan.corners.max() <= canvas - 28
            clutter = nmnist.render(composer.digits[split], plan.rows[~is_needle],
                                    plan.corners[~is_needle], canvas)
            extra = image.astype(int) - clutter
            if index % 2:  # negative: no needle at all
                assert label == 0 and not is_needle.any()
                assert parsed["object/bbox"].numpy().size == 0 and parsed["o2i"] == 0
                np.testing.assert_array_equal(extra, 0)
                continue
            assert label == 1 and is_needle.sum() == 1 and plan.needle == 0
            ymin, xmin, ymax, xmax = parsed["object/bbox"].numpy()
            y, x = plan.corners[0]
            assert (ymin, xmin, ymax, xmax) == (y, x, y + 28, x + 28)
            # The needle's pixels are exactly what the image adds to the clutter, and only
            # inside the recorded box (up to saturation at 255).
            outside = np.ones_like(extra, bool)
            outside[ymin:ymax, xmin:xmax] = False
            np.testing.assert_array_equal(extra[outside], 0)
            needle = composer.digits[split][plan.rows[0]].astype(int)
            box_clutter = clutter[ymin:ymax, xmin:xmax].astype(int)
            np.testing.assert_array_equal(image[ymin:ymax, xmin:xmax],
                                          np.minimum(box_clutter + needle, 255))
            assert parsed["source/id"].numpy().decode() == (
                f"{split}[{index}] needle={embedded[split].ids[plan.rows[0]]}")


def test_needles_used_duplicates_times_and_clutter_never_a_needle(embedded):
    composer = nmnist.NmnistComposer(embedded, 32, 3, duplicates={"train": 1, "val": 3, "test": 2})
    for split in metadata.SPLITS:
        n = composer.split_size(split)
        needles = [composer.plan(split, i).rows[0] for i in range(0, n, 2)]
        counts = np.unique(needles, return_counts=True)[1]
        assert set(counts) == {composer.duplicates[split]}
        assert len(counts) == np.sum(embedded[split].labels == 3)
        clutter_rows = np.concatenate([composer.plan(split, i).rows[1:] for i in range(50)])
        assert not (embedded[split].labels[clutter_rows] == 3).any()


def test_any_canvas_from_28(embedded):
    composer = nmnist.NmnistComposer(embedded, 28, 0)
    image, plan = composer.image("val", 0)
    np.testing.assert_array_equal(image, composer.digits["val"][plan.rows[0]])
    assert plan.bbox == (0, 0, 28, 28)
    with pytest.raises(ValueError, match="canvas_size must be >= 28"):
        nmnist.NmnistComposer(embedded, 27, 0)


def test_smaller_digits_keep_the_o2i_at_a_smaller_canvas(embedded, tmp_path):
    """--digit_size 14: digits resized, boxes 14 px, O2I 19.1 % at 32 x 32 as at 64 x 64."""
    composer = nmnist.NmnistComposer(embedded, 32, 2, digit_size=14)
    image, plan = composer.image("train", 0)
    assert composer.digits["train"].shape[1:] == (14, 14)
    assert plan.corners.max() <= 32 - 14
    y, x = plan.corners[0]
    assert plan.bbox == (y, x, y + 14, x + 14)
    # the resized needle is the full digit, anti-aliased: the same ink, a quarter of the area
    full, small = embedded["train"].images[plan.rows[0]], composer.digits["train"][plan.rows[0]]
    assert abs(small.astype(float).sum() * 4 / full.astype(float).sum() - 1) < 0.05
    assert image[y:y + 14, x:x + 14].max() > 0
    meta = nmnist.generate_nmnist(str(tmp_path), canvas_size=32, num_clutter=2, digit_size=14,
                                  duplicates={"train": 0, "val": 1, "test": 0}, num_shards=1,
                                  progress=False)
    assert meta["params"]["digit_size"] == 14
    assert meta["params"]["o2i"] == nmnist.o2i(64) == pytest.approx(0.1914, abs=1e-4)
    with pytest.raises(ValueError, match="digit_size must be in"):
        nmnist.NmnistComposer(embedded, 32, 2, digit_size=40)


def test_composition_is_deterministic_per_seed(embedded):
    a = nmnist.NmnistComposer(embedded, 64, 2, seed=1)
    b = nmnist.NmnistComposer(embedded, 64, 2, seed=1)
    c = nmnist.NmnistComposer(embedded, 64, 2, seed=2)
    assert [a("train", i) for i in (7, 3)] == [b("train", i) for i in (7, 3)]
    assert a("train", 3) != c("train", 3)
