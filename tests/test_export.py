"""SavedModel export, loading with plain TensorFlow, saved_model_cli, prediction on files."""

import dataclasses
import json
import os
import pathlib
import re
import shutil
import sys

import numpy as np
import pytest
import tensorflow as tf
import tifffile
from PIL import Image
from tiny_runs import finish, keras_probabilities, last_line, make_run_dir, start, start_binary

from needles_tf.models import build_evidence_model
from needles_tf.serving.export import export_saved_model
from needles_tf.serving.images import ImageError, fit_channels
from needles_tf.serving.predict import (
    PredictError,
    load_serving_model,
    predict_file,
    predict_files,
)

# Loads the SavedModel with TensorFlow alone and runs it on each .npy file given.
FRESH_LOAD = """
import sys
import numpy as np
import tensorflow as tf
saved_model, output, *inputs = sys.argv[1:]
serve = tf.saved_model.load(saved_model).signatures["serving_default"]
results = {}
for i, path in enumerate(inputs):
    for key, value in serve(images=tf.constant(np.load(path))).items():
        results[f"{i}/{key}"] = value.numpy()
assert not [m for m in sys.modules if m.startswith("needles_tf")], "project code was imported"
np.savez(output, **results)
"""


def saved_model_cli() -> list[str]:
    exe = pathlib.Path(sys.executable).parent / "saved_model_cli"
    if exe.exists():
        return [str(exe)]
    return [sys.executable, "-m", "tensorflow.python.tools.saved_model_cli"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return make_run_dir(tmp_path_factory.mktemp("runs") / "run")


@pytest.fixture(scope="module")
def saved_model(run):
    model, model_dir = run
    return export_saved_model(model, os.path.join(model_dir, "saved_model"))


@pytest.fixture(scope="module")
def serving(saved_model):
    return load_serving_model(saved_model)


def test_plain_tensorflow_and_saved_model_cli_give_the_keras_outputs(run, saved_model, tmp_path):
    model, _ = run
    rng = np.random.default_rng(0)
    inputs = [rng.random((2, 64, 64, 1), np.float32), rng.random((1, 96, 80, 1), np.float32)]
    paths = []
    for i, images in enumerate(inputs):
        paths.append(str(tmp_path / f"images{i}.npy"))
        np.save(paths[-1], images)
    script = tmp_path / "fresh_load.py"
    script.write_text(FRESH_LOAD)
    processes = [
        start([sys.executable, str(script), saved_model, str(tmp_path / "out.npz"), *paths],
              env_pythonpath=False),
        start([*saved_model_cli(), "show", "--dir", saved_model, "--all"]),
        start([*saved_model_cli(), "run", "--dir", saved_model, "--tag_set", "serve",
               "--signature_def", "serving_default", "--inputs", f"images={paths[1]}",
               "--outdir", str(tmp_path / "cli")]),
    ]
    fresh, show, cli_run = map(finish, processes)
    assert fresh.returncode == 0, fresh.stderr

    evidence_model = build_evidence_model(model)
    outputs = np.load(tmp_path / "out.npz")
    for i, images in enumerate(inputs):
        expected = evidence_model(images, training=False)
        np.testing.assert_allclose(outputs[f"{i}/logits"], expected["logits"], atol=1e-4)
        np.testing.assert_allclose(outputs[f"{i}/probability"],
                                   keras_probabilities(model, images), atol=1e-5)
        assert outputs[f"{i}/evidence_map"].shape == expected["evidence_map"].shape
        np.testing.assert_allclose(outputs[f"{i}/evidence_map"], expected["evidence_map"],
                                   atol=1e-4)
    assert outputs["0/evidence_map"].shape[1:3] != outputs["1/evidence_map"].shape[1:3]

    assert show.returncode == 0, show.stderr
    signature = show.stdout.split("signature_def['serving_default']")[1]
    assert "inputs['images']" in signature and "shape: (-1, -1, -1, 1)" in signature
    for key in ("probability", "logits", "evidence_map"):
        assert f"outputs['{key}']" in signature
    assert cli_run.returncode == 0, cli_run.stderr
    np.testing.assert_allclose(np.load(tmp_path / "cli" / "probability.npy"),
                               keras_probabilities(model, inputs[1]), atol=1e-5)


@pytest.mark.parametrize("images, message", [
    (tf.zeros((1, 2, 40, 1)), r"images must be at least 3 x 3 pixels"),
    (tf.zeros((40, 40, 1)), r"images \[40,40,1\] is not compatible with expected shape "
                            r"\[\?,\?,\?,1\]"),
    (tf.zeros((1, 40, 40, 3)), r"images \[1,40,40,3\] is not compatible"),
    (tf.fill((1, 40, 40, 1), np.nan), r"images must be finite \(no NaN or inf\)"),
    (tf.zeros((1, 40, 40, 1), tf.int32), r"expected to be a float tensor but is a int32"),
])
def test_the_signature_refuses_what_it_cannot_classify_with_its_own_message(serving, images,
                                                                            message):
    """Wrong size, rank, channels, NaN and dtype, through plain TensorFlow's loaded signature."""
    with pytest.raises(tf.errors.InvalidArgumentError, match=message):
        serving.signature(images=images)
    assert (serving.channels, serving.min_size) == (1, 3)


def test_export_keeps_directories_that_are_not_saved_models(run, tmp_path):
    model, _ = run
    (tmp_path / "notes.txt").write_text("not a SavedModel")
    with pytest.raises(FileExistsError, match="not a SavedModel"):
        export_saved_model(model, str(tmp_path))
    assert os.listdir(tmp_path) == ["notes.txt"]


def write_images(directory: pathlib.Path) -> dict[str, np.ndarray]:
    """Image files of several formats, sizes and channel counts -> the grey float image the
    model should see for each."""
    rng = np.random.default_rng(1)
    grey8 = rng.integers(0, 256, (40, 52), np.uint8)
    rgb8 = rng.integers(0, 256, (44, 36, 3), np.uint8)
    grey16 = rng.integers(0, 65536, (64, 48), np.uint16)
    unit = rng.random((70, 60, 1), np.float32)
    Image.fromarray(grey8).save(directory / "grey.png")
    Image.fromarray(rgb8).save(directory / "rgb.png")
    tifffile.imwrite(directory / "grey16.tif", grey16)
    tifffile.imwrite(directory / "rgb.tiff", rgb8, photometric="rgb")
    np.save(directory / "unit.npy", unit)
    np.save(directory / "rgb.npy", rgb8)
    rgb_as_grey = rgb8.astype(np.float32).mean(axis=-1, keepdims=True) / 255
    return {"grey.png": grey8[..., None] / 255, "rgb.png": rgb_as_grey,
            "grey16.tif": grey16[..., None] / 65535, "rgb.tiff": rgb_as_grey,
            "unit.npy": unit, "rgb.npy": rgb_as_grey}


def test_predict_files_of_every_format(run, serving, tmp_path):
    model, _ = run
    expected = write_images(tmp_path)
    heatmaps = tmp_path / "heatmaps"
    records = list(predict_files(serving, [str(tmp_path / name) for name in expected],
                                 heatmap_dir=str(heatmaps), strict=True))
    assert [os.path.basename(r["file"]) for r in records] == list(expected)
    for record, image in zip(records, expected.values()):
        probability = keras_probabilities(model, image[None].astype(np.float32))[0]
        assert record["probability"] == pytest.approx(probability, abs=1e-5)
        assert record["label"] == int(record["probability"] > 0.5)
        assert (record["height"], record["width"]) == image.shape[:2]
        with Image.open(record["heatmap"]) as heatmap:  # enlarged, with a colour bar
            assert heatmap.height > 2 * image.shape[0] and heatmap.width > 2 * image.shape[1]
            pixels = np.asarray(heatmap.convert("RGB")).astype(int)
        saturated = np.abs(pixels - pixels.mean(axis=-1, keepdims=True)).max(axis=-1) > 30
        assert saturated.sum() > 1000  # the evidence tints the (grey or grey-converted) image
        outputs = build_evidence_model(model)(image[None].astype(np.float32))
        evidence = np.asarray(outputs["evidence_map"])[0]
        np.testing.assert_allclose(np.load(record["evidence_map"]),
                                   evidence[..., 1] - evidence[..., 0], atol=1e-4)
    assert sorted(os.listdir(heatmaps)) == sorted(
        f"{name}.heatmap.{ext}" for name in expected for ext in ("png", "npy"))
    json.dumps(records)


def test_load_errors_name_the_directory(tmp_path):
    with pytest.raises(PredictError, match=f"^{tmp_path}: not a SavedModel directory"):
        load_serving_model(str(tmp_path))


def test_channel_conversion():
    grey = np.random.default_rng(2).random((5, 6, 1), np.float32)
    np.testing.assert_array_equal(fit_channels(grey, 3, "g.png"), np.repeat(grey, 3, -1))
    rgb = np.random.default_rng(3).random((5, 6, 3), np.float32)
    np.testing.assert_allclose(fit_channels(rgb, 1, "c.png")[..., 0], rgb.mean(-1), atol=1e-7)
    with pytest.raises(ImageError, match=r"^c.png: image has 3 channel\(s\), the model takes 2"):
        fit_channels(rgb, 2, "c.png")


@pytest.mark.parametrize("name, array, message", [
    ("two.npy", np.zeros((40, 40, 2), np.uint8), r"shape \(40, 40, 2\) is not an image"),
    ("rgba.npy", np.zeros((40, 40, 4), np.uint8), r"shape \(40, 40, 4\) is not an image"),
    ("small.npy", np.zeros((2, 40), np.uint8), "2 x 40 pixels; the model needs at least 3 x 3"),
    ("range.npy", np.full((40, 40), 2.0, np.float32), r"must lie in \[0, 1\]; found \[2, 2\]"),
    ("nan.npy", np.where(np.eye(40), np.nan, 0.5).astype(np.float32), "must be finite"),
    ("ints.npy", np.zeros((40, 40), np.int64), "pixel type int64 not supported"),
    ("corrupt.png", None, "cannot read image"),
    ("image.jp2", None, "unsupported file type '.jp2'"),
    ("missing.png", False, "no such file"),
])
def test_bad_files_get_one_line_errors_naming_them(serving, tmp_path, name, array, message):
    path = tmp_path / name
    if array is None:
        path.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    elif array is not False:
        np.save(path, array)
    with pytest.raises(PredictError, match=message) as error:
        predict_file(serving, str(path))
    assert str(error.value).startswith(f"{path}: ") and "\n" not in str(error.value)


def test_a_bad_file_is_skipped_in_a_batch_and_strict_stops(serving, tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    good = [tmp_path / "a" / "x.npy", tmp_path / "b" / "x.npy"]
    for path in good:
        np.save(path, np.full((32, 32), 0.5, np.float32))
    bad = tmp_path / "bad.npy"
    bad.write_bytes(b"garbage")
    files = [str(good[0]), str(bad), str(good[1])]
    errors = []
    records = list(predict_files(serving, files, heatmap_dir=str(tmp_path / "maps"),
                                 on_error=lambda path, message: errors.append(path)))
    assert [r["file"] for r in records] == [str(good[0]), str(good[1])]
    assert errors == [str(bad)]
    assert sorted(os.listdir(tmp_path / "maps")) == [
        "x.npy.1.heatmap.npy", "x.npy.1.heatmap.png", "x.npy.heatmap.npy", "x.npy.heatmap.png"]

    done = []
    with pytest.raises(PredictError, match="bad.npy"):
        for record in predict_files(serving, files, strict=True):
            done.append(record)
    assert len(done) == 1


def test_binaries(run, saved_model, tmp_path):
    """needles-export (replacing an earlier export atomically) and needles-predict on good
    and bad input; bad input gives a one-line error."""
    _, model_dir = run
    run_copy = tmp_path / "run_copy"
    shutil.copytree(model_dir, run_copy)
    stale = os.path.getmtime(run_copy / "saved_model" / "saved_model.pb")
    empty_run = tmp_path / "empty_run"
    empty_run.mkdir()
    good = tmp_path / "good.npy"
    np.save(good, np.zeros((33, 40), np.uint8))
    (tmp_path / "bad.png").write_bytes(b"not an image")
    output = tmp_path / "predictions.jsonl"
    export = start_binary("export", f"--model_dir={run_copy}")
    cases = {
        "export missing model_dir": (
            start_binary("export", f"--model_dir={tmp_path}/nothing"),
            "needles-export: error: ", "no best model"),
        "export without best.keras": (
            start_binary("export", f"--model_dir={empty_run}"),
            "needles-export: error: ", "best.keras: no best model"),
        "export without flags": (start_binary("export"), "needles-export: error: ",
                                 "--model_dir is required"),
        "predict without files": (
            start_binary("predict", f"--saved_model={saved_model}"),
            "needles-predict: error: ", "no image files given"),
        "predict with a bad file": (
            start_binary("predict", f"--saved_model={saved_model}", f"--output={output}",
                         f"--heatmap_dir={tmp_path}/maps", str(good), str(tmp_path / "bad.png")),
            "needles-predict: error: ", "1 of 2 files skipped"),
    }
    for name, (process, prefix, message) in cases.items():
        result = finish(process)
        assert result.returncode != 0 and "Traceback" not in result.stderr, (name, result.stderr)
        line = last_line(result.stderr)
        assert line.startswith(prefix) and message in line, (name, line)
    exported = finish(export)
    assert exported.returncode == 0, exported.stderr
    assert "has not finished" in exported.stderr  # a best model, no summary: warned, exported
    assert not re.search(r"^I\d{4} ", exported.stderr, re.MULTILINE), exported.stderr  # no INFO
    assert f"SavedModel written to {run_copy / 'saved_model'}" in exported.stdout
    assert os.path.getmtime(run_copy / "saved_model" / "saved_model.pb") > stale
    assert sorted(os.listdir(run_copy)) == ["best.keras", "saved_model"]
    assert load_serving_model(str(run_copy / "saved_model")).min_size == 3

    lines = output.read_text().splitlines()
    assert len(lines) == 1 and json.loads(lines[0])["file"] == str(good)
    assert sorted(os.listdir(tmp_path / "maps")) == ["good.npy.heatmap.npy", "good.npy.heatmap.png"]


def test_an_inference_failure_names_its_cause_not_the_graph_boilerplate(serving, tmp_path,
                                                                        monkeypatch):
    message = ("Graph execution error:\n\nDetected at node bagnet/stem_conv1/convolution defined "
               "at (most recent call last):\n<stack traces unavailable>\nOOM when allocating "
               "tensor with shape[1,64,9000,9000]\n\t [[{{node bagnet/stem_conv1/convolution}}]]")

    def out_of_memory(**images):
        raise tf.errors.ResourceExhaustedError(None, None, message)

    class OutOfMemory:  # a loaded SavedModel whose signature runs out of memory
        signatures = {"serving_default": out_of_memory}

    path = tmp_path / "big.npy"
    np.save(path, np.zeros((40, 40), np.uint8))
    with pytest.raises(PredictError, match=r"big.npy: inference failed \(ResourceExhaustedError: "
                                           r"OOM when allocating tensor with shape"):
        predict_file(dataclasses.replace(serving, loaded=OutOfMemory()), str(path))
