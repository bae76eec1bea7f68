"""nMNIST at large canvases: refused before any work when it cannot fit, read back when it can,
and the memory the check assumes is an upper bound of what a worker holds."""

import os
import pickle
import re
import subprocess
import sys
import tracemalloc

import numpy as np
import pytest
import tensorflow as tf
from mnist_files import write_idx_set

from needles_tf.data import metadata, schema
from needles_tf.generation import mnist, nmnist, resources
from needles_tf.input import cache, make_dataset


def test_a_canvas_that_cannot_fit_in_memory_is_refused_with_the_figures(tmp_path):
    out = tmp_path / "huge"
    with pytest.raises(resources.NoRoom) as refused:
        nmnist.generate_nmnist(str(out), canvas_size=1_000_000, num_clutter=2, workers=2,
                               progress=False)
    message = str(refused.value)  # 10^12 bytes of canvas, 0.9 GiB of blank PNG
    assert re.match(r"--canvas_size=1000000: one canvas needs about 93\d\.\d GiB per worker "
                    r"\(x2 workers, plus [\d.]+ GiB in flight to the writer\), "
                    r"[\d.]+ GiB are available", message)
    assert "fewer --workers" in message and "\n" not in message
    assert not out.exists()  # nothing written, not even the directory


def test_a_dataset_that_cannot_fit_on_disk_is_refused_with_the_figures(tmp_path):
    out = tmp_path / "many"
    with pytest.raises(resources.NoRoom, match=(
            r"^--canvas_size=20000: the dataset needs about [\d.]+ GiB on disk, [\d.]+ GiB are "
            rf"free at {out}: another --output_dir, .*--train_duplicates")):
        nmnist.generate_nmnist(str(out), canvas_size=20000, num_clutter=2,
                               duplicates={"train": 10 ** 6, "val": 0, "test": 0},
                               progress=False)
    assert not out.exists()


def test_the_command_refuses_in_one_line(tmp_path):
    out = tmp_path / "cli"
    result = subprocess.run(
        [os.path.join(os.path.dirname(sys.executable), "needles-make-nmnist"),
         "--canvas_size=200000", "--workers=2", f"--output_dir={out}", "--progress=false"],
        capture_output=True, text=True, timeout=120)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith(
        "needles-make-nmnist: error: --canvas_size=200000: one canvas needs about 37.")
    assert not out.exists()


@pytest.fixture(scope="module")
def large(tmp_path_factory):
    """2048 x 2048 canvases of a small IDX source: 16 training images (8 needles)."""
    idx = str(tmp_path_factory.mktemp("idx"))
    write_idx_set(idx)
    out = str(tmp_path_factory.mktemp("nmnist_2048"))
    meta = nmnist.generate_nmnist(out, canvas_size=2048, num_clutter=3,
                                  duplicates={"train": 1, "val": 0, "test": 0},
                                  mnist_source=f"idx:{idx}", num_shards=2, workers=2,
                                  progress=False)
    return out, meta, nmnist.NmnistComposer(mnist.load_mnist(f"idx:{idx}"), 2048, 3,
                                            duplicates={"train": 1, "val": 0, "test": 0})


def test_large_canvases_read_back_with_their_o2i_and_needle(large):
    out, meta, composer = large
    assert meta["params"]["o2i"] == pytest.approx(28 * 28 / 2048 ** 2)  # 0.0187 %
    assert meta["splits"]["train"]["count"] == 16
    paths = metadata.verify_shards(out, "train", meta)
    records = [schema.Decoder().decode(r) for r in tf.data.TFRecordDataset(paths)]
    images = [image for batch, _ in make_dataset(out, "train", 4, training=False)
              for image in batch.numpy()]
    assert len(records) == len(images) == 16
    for index, (record, image) in enumerate(zip(records, images)):
        expected, plan = composer.image("train", index)
        np.testing.assert_array_equal(np.rint(image[..., 0] * 255), expected)
        assert int(record["label"]) == plan.label == (index % 2 == 0)
        if plan.label:
            assert float(record["o2i"]) == pytest.approx(28 * 28 / 2048 ** 2)
            ymin, xmin, ymax, xmax = record["object/bbox"].numpy()
            assert (ymax - ymin, xmax - xmin) == (28, 28) and image[ymin:ymax, xmin:xmax].max()
        else:
            assert float(record["o2i"]) == 0 and record["object/bbox"].shape == (0,)


def test_a_cache_of_large_images_fills_in_bounded_batches(large, monkeypatch):
    out, _, _ = large
    monkeypatch.setattr(cache, "FILL_BYTES", 3 * 2048 ** 2)  # 3 images per fill batch
    labels = [int(y) for _, batch in make_dataset(out, "train", 5, training=True,
                                                  cache="memory", seed=1)
              for y in batch.numpy()]
    assert len(labels) == 16 and sum(labels) == 8


def test_memory_estimate_bounds_a_workers_measured_peak():
    """One writer task at 2048^2 (4 canvases of the paper's density), made and pickled as a
    worker does, under tracemalloc (which sees NumPy's and Python's allocations)."""
    composer = nmnist.NmnistComposer(mnist.load_mnist("embedded"), 2048, 1600)
    chunk = nmnist.chunk_images(2048)
    tracemalloc.start()
    try:
        pickle.dumps([composer("train", i) for i in range(chunk)])
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    estimate = nmnist.canvas_bytes(2048, 1601)
    assert 2048 ** 2 < peak <= estimate < 2 * peak + schema.PNG_BAND_BYTES
