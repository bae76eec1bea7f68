"""Where a model looks: detection AP and pointing game, saliency at scale, needles-saliency."""

import json
import os

import keras
import numpy as np
import pytest
from tiny_runs import last_line, make_run_dir, start_binary, tiny_nmnist

from needles_tf.data import schema
from needles_tf.evaluation import localisation
from needles_tf.evaluation.saliency import localise, map_function
from needles_tf.generation import writer
from needles_tf.models import build_classifier

SIZE = 32
NEEDLE = (16, 8)  # top-left corner of the needle's 4 x 4 block, on a location's 3 x 3 patch
NEEDLE_MASK = np.zeros((SIZE, SIZE), np.uint8)
NEEDLE_MASK[16:20, 8:12] = 255


def test_average_precision_counts_misses_and_negatives_as_the_rules_say():
    # ranked: hit, negative, missed positive, hit; 3 positives -> recall 1/3 at precision 1,
    # 2/3 at precision 2/4 (the envelope), the missed needle never recalled
    assert localisation.detection_average_precision(
        [0.9, 0.8, 0.7, 0.6], [True, False, False, True], [1, 0, 1, 1]) == pytest.approx(0.5)
    assert localisation.detection_average_precision([3, 2, 1], [True, True, False],
                                                    [1, 1, 0]) == 1.0
    # a negative image's detection ranked first halves the first precision
    assert localisation.detection_average_precision([3, 2], [False, True], [0, 1]) == 0.5
    assert localisation.detection_average_precision([1, 2], [False, False], [0, 0]) is None
    assert localisation.pointing_accuracy([True, False, True, True], [1, 1, 0, 0]) == 0.5
    assert localisation.peak(np.array([[0, 2], [2, 1]])) == (0, 1, 2.0)
    with pytest.raises(ValueError, match="one of each per image"):
        localisation.detection_average_precision([1, 2], [True], [1, 1])


def _image(blocks):
    image = np.zeros((SIZE, SIZE, 1), np.uint8)
    for (row, col), value in blocks:
        image[row:row + 4, col:col + 4] = value
    return image


@pytest.fixture(scope="module")
def hand_made(tmp_path_factory):
    """val: 3 positives with the needle (brightness 200) at NEEDLE, 1 positive whose brighter
    decoy (250) lies elsewhere, 2 negatives with a dim block (100). Positives carry the needle's
    mask and a larger box: the mask must win."""
    images = [([(NEEDLE, 200)], 1)] * 3 + [([(NEEDLE, 200), ((0, 16), 250)], 1)] + \
        [([((8, 24), 100)], 0), ([((0, 0), 100)], 0)]

    def make_example(split, index):
        blocks, label = images[index]
        return schema.encode_example(
            _image(blocks), label, 0.0, (16, 8, 24, 16) if label else None, f"{split}/{index}",
            mask=NEEDLE_MASK if label else None), label

    out = str(tmp_path_factory.mktemp("hand_made"))
    writer.write_dataset(out, "hand_made", {}, {"train": 0, "val": len(images), "test": 0},
                         make_example, image={"height": SIZE, "width": SIZE, "channels": 1},
                         num_shards=1, progress=False)
    return out


def looks_at_bright_blocks():
    """A BagNet-shaped model (embedding, max pooling, linear logits): one 3x3 convolution of the
    squared image at stride 8 (a location centred on pixel 1 + 8 i, as in a BagNet); its needle
    logit is the brightest location's value."""
    inputs = keras.Input((None, None, 1))
    squared = keras.layers.Activation(keras.ops.square)(inputs)
    embedding = keras.layers.Conv2D(1, 3, strides=8, use_bias=False, name="embedding",
                                    kernel_initializer="ones")(squared)
    pooled = keras.layers.GlobalMaxPooling2D(name="pooling")(embedding)
    logits = keras.layers.Dense(2, name="logits")(pooled)
    model = keras.Model(inputs, logits)
    model.get_layer("logits").set_weights([np.array([[0.0, 1.0]], np.float32),
                                           np.array([0.0, -1.0], np.float32)])
    return model


def test_detection_scores_of_a_model_built_to_find_bright_blocks(hand_made):
    scores, examples = localise(looks_at_bright_blocks(), hand_made, "val", batch_size=4,
                                num_examples=2)
    # ranked by confidence: the decoy (a miss on a positive), the 3 needles, the 2 negatives
    expected_ap = (3 / 4 + 3 / 4 + 3 / 4) / 4
    for name in ("saliency", "evidence"):
        assert scores[name]["pointing_accuracy"] == 0.75, name
        assert scores[name]["average_precision"] == pytest.approx(expected_ap), name
    assert scores["pointing_chance"] == pytest.approx(16 / SIZE**2)  # the mask, not the box
    assert scores["count"] == 6 and scores["positives"] == 4
    assert sum(scores["outcomes"].values()) == 6
    kept = [e for outcome in examples.values() for e in outcome]
    assert all(len(v) <= 2 for v in examples.values()) and kept
    needle = next(e for e in kept if e.label == 1 and e.image.max() < 0.9)
    assert localisation.peak(needle.maps["evidence"])[:2] == (17, 9)  # centre of location (2, 1)
    assert needle.region.sum() == 16


def test_saliency_of_an_rf177_model_at_200_pixels():
    model = build_classifier(1, receptive_field=177, width_scale=1 / 16)
    images = np.random.default_rng(0).random((2, 200, 200, 1)).astype(np.float32)
    probabilities, saliency, evidence = (t.numpy() for t in map_function(model)(images))
    assert saliency.shape == (2, 200, 200) and evidence.shape == (2, 25, 25)
    assert np.isfinite(saliency).all() and saliency.max() > 0
    assert ((probabilities > 0) & (probabilities < 1)).all()


def test_needles_saliency_writes_scores_and_figures(tmp_path):
    data = tiny_nmnist(str(tmp_path / "data"), num_clutter=1,
                       duplicates={"train": 0, "val": 1, "test": 0})
    _, model_dir = make_run_dir(tmp_path / "run")
    out = tmp_path / "saliency"
    process = start_binary("saliency", f"--model_dir={model_dir}", f"--data_dir={data}",
                           "--num_images=3", f"--output_dir={out}")
    stdout, stderr = process.communicate(timeout=240)
    assert process.returncode == 0, stderr
    assert "pointing accuracy" in stdout and last_line(stdout).startswith("scores and figures")
    scores = json.loads((out / "detection.json").read_text())
    assert scores["pointing_chance"] == pytest.approx(28**2 / 32**2)  # nMNIST's digit box
    for name in ("saliency", "evidence"):
        assert 0 <= scores[name]["pointing_accuracy"] <= 1
    figures = sorted(p for p in os.listdir(out) if p.endswith(".png"))
    assert figures and set(figures) <= {f"{o}.png" for o in scores["outcomes"]}
    assert all(f"{o}.png" in figures for o, n in scores["outcomes"].items() if n)

    process = start_binary("saliency", f"--model_dir={tmp_path / 'nothing'}",
                           f"--data_dir={data}")
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 1 and "needles-saliency: error:" in stderr
    assert str(tmp_path / "nothing") in stderr and "Traceback" not in stderr


def test_a_run_scores_its_best_model_as_a_detector_into_its_summary(tmp_path):
    """needles-train --score_detection: the test split's detection scores in summary.json (as
    needles-saliency computes them), and in the report's results table."""
    from needles_tf import run_dir
    from needles_tf.experiments.results import collect
    from needles_tf.training.trainer import TrainConfig, train

    data = tiny_nmnist(str(tmp_path / "data"), num_clutter=1,
                       duplicates={"train": 1, "val": 1, "test": 1})
    summary = train(TrainConfig(data, str(tmp_path / "runs" / "a"), receptive_field=9,
                                blocks=(1, 1, 1, 1), width_scale=1 / 16, epochs=1,
                                batch_size=32, optimizer="adam", normalization=False,
                                log_images=0, score_detection=True), verbose=0)
    detection = summary["detection"]
    scores, _ = localise(run_dir.load_best_model(str(tmp_path / "runs" / "a")), data, "test",
                         num_examples=0)
    assert detection["count"] == scores["count"] and detection["split"] == "test"
    for name in ("saliency", "evidence"):
        assert detection[name] == pytest.approx(scores[name])
    row = collect(str(tmp_path / "runs")).iloc[0]
    assert row["evidence_ap"] == pytest.approx(scores["evidence"]["average_precision"])
    assert row["pointing_chance"] == pytest.approx(28**2 / 32**2)
    assert row["stop_reason"] == "cap" and row["stopped_epoch"] == 1
