"""Tile-streamed training (--tile_size): the training loop's update and a whole run equal the
whole-image ones; settings that cannot stream are refused before anything is written."""

import csv
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from needles_tf import run_dir
from needles_tf.generation import nmnist
from needles_tf.models import build_classifier
from needles_tf.models.streaming import StreamedClassifier
from needles_tf.training.loop import TrainLoop
from needles_tf.training.optimizers import make_optimizer
from needles_tf.training.trainer import TrainConfig, train


def test_streamed_update_with_micro_batches_equals_the_whole_images():
    rng = np.random.default_rng(1)
    images = rng.random((8, 45, 38, 1)).astype("float32")
    labels = np.tile([0, 1], 4).astype("int32")

    def update(tile_size: int | None) -> tuple[np.ndarray, float]:
        keras.utils.set_random_seed(5)
        model = build_classifier(1, receptive_field=9, width_scale=1 / 16, pooling="attention",
                                 blocks=(1, 1, 1, 1), normalization=False)
        optimizer = make_optimizer("sgd", 1e-2)
        optimizer.build(model.trainable_variables)
        before = np.concatenate([np.ravel(w) for w in model.get_weights()])
        streamed = StreamedClassifier(model, tile_size) if tile_size else None
        loop = TrainLoop(model, optimizer, tf.distribute.get_strategy(), 4, 2, streamed=streamed)
        loss, _, count = loop.step(iter(tf.data.Dataset.from_tensors((images, labels)))).numpy()
        assert count == 8
        return np.concatenate([np.ravel(w) for w in model.get_weights()]) - before, loss

    (whole, whole_loss), (tiled, tiled_loss) = update(None), update(16)
    assert np.linalg.norm(whole) > 0
    assert np.linalg.norm(tiled - whole) <= 1e-4 * np.linalg.norm(whole)
    assert tiled_loss == pytest.approx(whole_loss, rel=1e-5)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("nmnist_streamed"))
    nmnist.generate_nmnist(out, canvas_size=40, num_clutter=1, num_shards=1, progress=False,
                           duplicates={"train": 1, "val": 1, "test": 1})
    return out


def _config(data_dir, model_dir, **overrides):
    settings = dict(receptive_field=9, blocks=(1, 1, 1, 1), width_scale=1 / 16, epochs=2,
                    train_size=96, reference_size=0, batch_size=16, learning_rate=2e-3,
                    lr_milestones=(5,), optimizer="adam", seed=2, normalization=False,
                    deterministic=True, log_images=0)
    return TrainConfig(str(data_dir), str(model_dir), **{**settings, **overrides})


def _losses(model_dir) -> list[float]:
    with open(os.path.join(model_dir, run_dir.METRICS)) as f:
        return [float(row["loss"]) for row in csv.DictReader(f)]


def test_a_streamed_run_trains_as_the_whole_image_run(data_dir, tmp_path):
    whole = train(_config(data_dir, tmp_path / "whole"), verbose=0)
    tiled = train(_config(data_dir, tmp_path / "tiled", tile_size=20), verbose=0)
    np.testing.assert_allclose(_losses(tmp_path / "tiled"), _losses(tmp_path / "whole"),
                               rtol=1e-4)
    assert tiled["val_accuracy"] == pytest.approx(whole["val_accuracy"], abs=1e-9)
    assert tiled["config"]["tile_size"] == 20


@pytest.mark.parametrize("overrides, message", [
    (dict(normalization=True), "instance normalisation"),
    (dict(remat="block"), "choose one"),
    (dict(score_detection=True), "leave out --score_detection"),
    (dict(tile_size=10), "give --tile_size of at least 14"),
])
def test_settings_that_cannot_stream_are_refused_before_writing(data_dir, tmp_path, overrides,
                                                                 message):
    settings = {"tile_size": 20, **overrides}
    with pytest.raises(ValueError, match=message):
        train(_config(data_dir, tmp_path / "run", **settings), verbose=0)
    assert not os.path.exists(tmp_path / "run" / run_dir.CONFIG)
