"""Rematerialisation and micro-batches (issue 15): the same outputs, gradients and training
whatever the mode; --micro_batch_size=auto under an injected memory limit."""

import csv
import os

import keras
import numpy as np
import pytest
import tensorflow as tf
from tiny_runs import Interrupt, tiny_nmnist

from needles_tf import run_dir
from needles_tf.models import build_classifier
from needles_tf.models.remat import REMAT_MODES, Rematerialised, rematerialised
from needles_tf.training import memory, options
from needles_tf.training.trainer import TrainConfig, train


@pytest.mark.parametrize("mode, settings, segments", [
    ("block", dict(receptive_field=9, blocks=(2, 1, 1, 1), normalization=True), 1 + 5),
    ("stage", dict(receptive_field=33, blocks=(2, 2, 1, 1), normalization=False,
                   pooling="attention"), 1 + 4),
])
def test_the_twin_shares_the_weights_and_gives_the_same_loss_and_gradients(mode, settings,
                                                                             segments):
    keras.utils.set_random_seed(1)
    model = build_classifier(1, width_scale=1 / 16, **settings)
    twin = rematerialised(model, mode)
    assert sum(isinstance(layer, Rematerialised) for layer in twin.layers) == segments
    assert [id(v) for v in twin.trainable_variables] == [id(v) for v in model.trainable_variables]
    rng = np.random.default_rng(0)
    images = rng.random((4, 40, 40, 1)).astype("float32")
    labels = np.array([0, 1, 1, 0])
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)

    @tf.function  # graph mode, as in training
    def loss_and_gradients(network):
        with tf.GradientTape() as tape:
            value = loss(labels, network(images, training=True))
        return value, tape.gradient(value, network.trainable_variables)

    (plain, plain_grads), (remat, remat_grads) = (loss_and_gradients(m) for m in (model, twin))
    assert float(remat) == pytest.approx(float(plain), rel=1e-6)
    for a, b in zip(plain_grads, remat_grads, strict=True):
        np.testing.assert_allclose(b.numpy(), a.numpy(), rtol=1e-5, atol=1e-7)


def test_modes_and_refusals():
    assert options.REMAT == REMAT_MODES  # the flag's choices, listed without TensorFlow
    model = build_classifier(1, receptive_field=9, width_scale=1 / 16, blocks=(1, 1, 1, 1))
    assert rematerialised(model, "none") is model
    with pytest.raises(ValueError, match="remat must be one of none, stage, block; got 'all'"):
        rematerialised(model, "all")
    plain = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Conv2D(2, 3)])
    with pytest.raises(ValueError, match="no BagNet blocks"):
        rematerialised(plain, "block")


def test_training_with_remat_and_auto_micro_batches_gives_the_same_history_and_files(
        tmp_path, monkeypatch):
    """A run trained with --remat=block and --micro_batch_size=auto (room for 9 images: 8 of
    16), resumed with --remat=stage and auto again (room for all: the recorded 8 is kept), has
    the history of a plain run with micro-batches of 8, and saves the plain classifier."""
    data_dir = tiny_nmnist(str(tmp_path / "data"), 0, {"train": 1, "val": 1, "test": 1})

    def config(name, remat, micro_batch_size):
        return TrainConfig(data_dir, str(tmp_path / name), receptive_field=9,
                           blocks=(1, 1, 1, 1), width_scale=1 / 16, normalization=False,
                           epochs=2, batch_size=16, micro_batch_size=micro_batch_size,
                           train_size=64, reference_size=0, optimizer="adam",
                           learning_rate=1e-3, lr_milestones=(), log_images=0,
                           deterministic=True, remat=remat)

    train(config("plain", "none", 8), verbose=0)
    model = build_classifier(1, receptive_field=9, width_scale=1 / 16, blocks=(1, 1, 1, 1))
    fixed, per_image = memory.step_bytes(model, 32, 32, "block", "adam", True)
    limit = int((fixed + 9 * per_image) / memory.USABLE_SHARE)
    monkeypatch.setattr(memory, "device_memory_bytes", lambda: limit)
    with pytest.raises(KeyboardInterrupt):
        train(config("remat", "block", "auto"), verbose=0, extra_callbacks=[Interrupt(1)])
    monkeypatch.setattr(memory, "device_memory_bytes", lambda: 100 * limit)
    summary = train(config("remat", "stage", "auto"), verbose=0)  # a resume may change remat
    assert summary["config"]["remat"] == "stage" and summary["config"]["micro_batch_size"] == 8

    def history(name):
        with open(tmp_path / name / run_dir.METRICS) as f:
            return list(csv.DictReader(f))

    for ours, theirs in zip(history("remat"), history("plain"), strict=True):
        for key in ("loss", "accuracy", "val_loss", "val_accuracy"):
            assert float(ours[key]) == pytest.approx(float(theirs[key]), rel=1e-5, abs=1e-6)
    saved = run_dir.load_best_model(str(tmp_path / "remat"))
    assert not any(isinstance(layer, Rematerialised) for layer in saved.layers)
    assert saved.get_layer("stage1_block1_conv1") is not None
    assert sorted(os.listdir(tmp_path / "remat")) == sorted(os.listdir(tmp_path / "plain"))


def test_auto_micro_batch_divides_the_batch_and_refuses_what_cannot_fit():
    model = build_classifier(1, receptive_field=33, width_scale=1 / 4, blocks=(1, 1, 1, 1))
    (fixed, plain), (_, remat) = (memory.step_bytes(model, 256, 256, mode, "adam", True)
                                  for mode in ("none", "block"))
    assert remat < plain  # what rematerialisation is for

    def budget(images, per_image=plain):  # device memory for `images` images
        return int((fixed + images * per_image) / memory.USABLE_SHARE) + 1

    def pick(limit, mode="none", batch=32):
        return memory.auto_micro_batch(model, 256, 256, batch, mode, "adam", budget_bytes=limit)

    assert pick(budget(5.5)) == 4 and pick(budget(40)) == 32 and pick(budget(7), batch=24) == 6
    assert pick(budget(5.5, remat), "block") == 4
    with pytest.raises(ValueError, match=r"one 256 x 256 image needs about [\d.]+ GiB in a "
                       r"training step .* try --remat=block, or a smaller --width_scale"):
        pick(budget(1, remat))  # fits with rematerialisation only
    with pytest.raises(ValueError, match=r"usable here; try a smaller --width_scale, or smaller"):
        pick(int(fixed), "block")
    # streamed in 64-pixel tiles, a step holds a tile's activations per image (and the images)
    streamed = memory.auto_micro_batch(model, 256, 256, 32, "none", "adam",
                                       budget_bytes=budget(5.5), tile_size=64)
    assert streamed == 32
