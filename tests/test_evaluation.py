"""Metrics against a hand-computed case; evaluate() and needles-evaluate on a tiny nMNIST."""

import json
import os

import numpy as np
import pytest
from tiny_runs import (
    finish,
    keras_probabilities,
    last_line,
    make_run_dir,
    start_binary,
    tiny_nmnist,
)

from needles_tf.evaluation.evaluate import evaluate, predict_probabilities
from needles_tf.evaluation.metrics import classification_metrics
from needles_tf.input import make_dataset


def test_metrics_match_a_hand_computed_case():
    labels = [1, 1, 1, 0, 0, 0, 1, 0]
    probs = [0.9, 0.6, 0.3, 0.5, 0.2, 0.7, 0.8, 0.1]
    m = classification_metrics(labels, probs)
    # Predicted (p > 0.5): 1 1 0 0 0 1 1 0 -> tp 3, fn 1, fp 1, tn 3 (0.5 is not above 0.5).
    assert m["confusion_matrix"] == [[3, 1], [1, 3]]
    assert m["accuracy"] == 6 / 8 and m["precision"] == 3 / 4 and m["recall"] == 3 / 4
    # AUC: of the 16 (positive, negative) pairs, the positive scores higher in 13:
    # 0.9, 0.8 beat all 4 negatives; 0.6 beats 0.5, 0.2, 0.1; 0.3 beats 0.2, 0.1.
    assert m["auc"] == pytest.approx(13 / 16)
    # AP: positives ranked 1, 2, 4, 6 -> (1/1 + 2/2 + 3/4 + 4/6) / 4.
    assert m["average_precision"] == pytest.approx((1 + 1 + 3 / 4 + 4 / 6) / 4)
    assert m["count"] == 8 and m["positives"] == 4
    assert classification_metrics(labels, probs, threshold=0.25)["confusion_matrix"] == [
        [2, 2], [0, 4]]
    json.dumps(m)  # plain Python types only


def test_single_class_and_bad_input():
    m = classification_metrics([0, 0, 0], [0.2, 0.7, 0.1])
    assert m["auc"] is None and m["average_precision"] is None
    assert m["confusion_matrix"] == [[2, 1], [0, 0]] and m["recall"] == 0.0
    assert classification_metrics([1, 1], [0.2, 0.4])["precision"] == 0.0
    with pytest.raises(ValueError, match="empty"):
        classification_metrics([], [])
    with pytest.raises(ValueError, match="2 labels but 3"):
        classification_metrics([0, 1], [0.1, 0.2, 0.3])
    with pytest.raises(ValueError, match="0 or 1"):
        classification_metrics([0, 2], [0.1, 0.2])
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        classification_metrics([0, 1], [0.1, 1.5])


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return tiny_nmnist(str(tmp_path_factory.mktemp("nmnist")), 1,
                       {"train": 0, "val": 0, "test": 1})


def read_test_split(data_dir):
    """(images, labels) of the test split, read in one batch."""
    images, labels = next(iter(make_dataset(data_dir, "test", 1000, training=False)))
    return images.numpy(), labels.numpy()


@pytest.fixture(scope="module")
def run(tmp_path_factory, data_dir):
    """A tiny run directory whose model predicts half of the test images positive."""
    return make_run_dir(tmp_path_factory.mktemp("runs") / "run",
                        calibration_images=read_test_split(data_dir)[0])


def test_evaluate_on_a_tiny_dataset(data_dir, run):
    model, _ = run
    images, labels = read_test_split(data_dir)
    got_labels, got_probs = predict_probabilities(
        model, make_dataset(data_dir, "test", 48, training=False))
    np.testing.assert_array_equal(got_labels, labels)
    # Other batch sizes may change the last digits (instance norm reductions).
    np.testing.assert_allclose(got_probs, keras_probabilities(model, images), atol=1e-4)
    assert 0 < (got_probs > 0.5).sum() < len(got_probs)

    result = evaluate(model, data_dir, "test", batch_size=48)
    reference = keras_probabilities(model, images)  # the model on the decoded images directly
    assert result["accuracy"] == pytest.approx(np.mean((reference > 0.5) == labels), abs=0.006)
    assert result["data_dir"] == data_dir and result["split"] == "test"
    assert result["count"] == 200 and result["positives"] == 100
    (tn, fp), (fn, tp) = result["confusion_matrix"]
    assert tn + fp + fn + tp == 200 and 0 < tp + fp < 200


def test_evaluate_rejects_a_dataset_that_does_not_fit(data_dir, run, tmp_path):
    rgb_model, _ = make_run_dir(tmp_path / "rgb", channels=3)
    with pytest.raises(ValueError, match=r"1 channel\(s\), the model takes 3"):
        evaluate(rgb_model, data_dir)
    with pytest.raises(ValueError, match="split 'val' has no images"):
        evaluate(run[0], data_dir, "val")


def test_evaluate_binary(data_dir, run, tmp_path):
    _, model_dir = run
    output = tmp_path / "metrics.json"
    processes = [
        start_binary("evaluate", f"--model_dir={model_dir}", f"--data_dir={data_dir}"),
        start_binary("evaluate", f"--model_dir={model_dir}", f"--data_dir={data_dir}",
                     "--split=validation", f"--output={output}"),
        start_binary("evaluate", f"--model_dir={model_dir}", f"--data_dir={tmp_path}/nothing"),
        start_binary("evaluate", f"--model_dir={tmp_path}/nothing", f"--data_dir={data_dir}"),
    ]
    ok, no_split, no_data, no_model = map(finish, processes)
    assert ok.returncode == 0, ok.stderr
    assert "accuracy" in ok.stdout and "confusion matrix" in ok.stdout
    dataset = os.path.basename(os.path.normpath(data_dir))
    with open(os.path.join(model_dir, f"eval_test_{dataset}.json")) as f:
        saved = json.load(f)
    assert saved["count"] == 200 and saved["model_dir"] == model_dir
    assert not [n for n in os.listdir(model_dir) if ".tmp" in n]
    for result, message in ((no_split, "no split 'validation'"),
                            (no_data, "dataset.json: not found"),
                            (no_model, "no best model")):
        assert result.returncode != 0 and "Traceback" not in result.stderr, result.stderr
        line = last_line(result.stderr)
        assert line.startswith("needles-evaluate: error: ") and message in line, line
    assert not output.exists()
