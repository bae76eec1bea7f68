"""Fault injection (issue 11): a full disk while generating and while checkpointing, and a
generator and a training killed with SIGKILL midway. Each gives one clear error (or none: a
kill), leaves no half-written file that looks finished, and the same command then completes:
shards byte-identical to an uninterrupted generation's, histories to an uninterrupted run's."""

import errno
import os
import pathlib
import signal
import subprocess
import threading
import time

import keras
import pytest
import tensorflow as tf
from tiny_runs import start_binary

from needles_tf import run_dir
from needles_tf.data import metadata
from needles_tf.generation import nmnist
from needles_tf.training import callbacks as cb
from needles_tf.training.trainer import TrainConfig, TrainingError, train

DUPLICATES = {"train": 1, "val": 1, "test": 1}


def shard_bytes(directory) -> dict[str, bytes]:
    return {name: open(os.path.join(directory, name), "rb").read()
            for name in sorted(os.listdir(directory)) if name.endswith(".tfrecord")}


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An uninterrupted generation: 8 train shards, as the binary writes by default."""
    out = str(tmp_path_factory.mktemp("reference"))
    nmnist.generate_nmnist(out, canvas_size=32, num_clutter=0, num_shards=8, progress=False,
                           duplicates=DUPLICATES)
    return out


def test_a_full_disk_while_generating_is_one_error_and_a_rerun_completes(reference, tmp_path,
                                                                          monkeypatch):
    real_writer = tf.io.TFRecordWriter
    shard = metadata.read_metadata(reference)["splits"]["train"]["shards"][0]["count"]

    class FullDisk(real_writer):  # the disk fills up in the middle of the third shard
        records = 0

        def write(self, record):
            FullDisk.records += 1
            if FullDisk.records > 2.5 * shard:  # TensorFlow's own error for ENOSPC
                raise tf.errors.ResourceExhaustedError(None, None, "x.tmp-1; No space left on "
                                                                   "device")
            super().write(record)

    monkeypatch.setattr(tf.io, "TFRecordWriter", FullDisk)
    out = str(tmp_path / "data")
    with pytest.raises(metadata.DatasetError, match=rf"^{out}: cannot write there \(No space "
                                                    r"left on device\); the 2 shard\(s\)"):
        nmnist.generate_nmnist(out, canvas_size=32, num_clutter=0, num_shards=8,
                               progress=False, duplicates=DUPLICATES)
    left = sorted(os.listdir(out))
    assert left == ["dataset.partial.json", "train-00000-of-00008.tfrecord",
                    "train-00001-of-00008.tfrecord"]  # no temporary, no dataset.json
    with pytest.raises(metadata.DatasetError, match="incomplete dataset"):
        metadata.read_metadata(out)
    monkeypatch.setattr(tf.io, "TFRecordWriter", real_writer)  # space freed
    nmnist.generate_nmnist(out, canvas_size=32, num_clutter=0, num_shards=8, progress=False,
                           duplicates=DUPLICATES)
    assert shard_bytes(out) == shard_bytes(reference)


def test_a_full_disk_while_checkpointing_keeps_the_last_epoch_and_a_rerun_finishes(
        reference, tmp_path, monkeypatch):
    data_dir = reference  # read only
    config = TrainConfig(data_dir, str(tmp_path / "run"), receptive_field=9, blocks=(1, 1, 1, 1),
                         width_scale=1 / 16,
                         normalization=False, epochs=2, batch_size=32, train_size=64,
                         reference_size=0, optimizer="adam", learning_rate=1e-3,
                         lr_milestones=(), log_images=0)
    real_save = keras.Model.save_weights

    def full_after_one_epoch(self, path, *args, **kwargs):
        if "epoch-00002" in path:
            with open(path, "wb") as f:  # a partial file, then the disk is full
                f.write(b"\x89HDF")
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), path)
        return real_save(self, path, *args, **kwargs)

    monkeypatch.setattr(keras.Model, "save_weights", full_after_one_epoch)
    with pytest.raises(TrainingError, match=r"cannot write in .*run \(No space left on device\); "
                                            r"the run is kept as of epoch 1: make room"):
        train(config, verbose=0)
    assert run_dir.checkpoint_state(config.model_dir)["epoch"] == 1
    monkeypatch.setattr(keras.Model, "save_weights", real_save)
    summary = train(config, verbose=0)
    assert summary["status"] == "finished" and summary["epochs"] == 2
    history = cb.read_history(os.path.join(config.model_dir, run_dir.METRICS))
    assert [row["epoch"] for row in history] == [1, 2]


def kill_when_exists(process: subprocess.Popen, path: pathlib.Path) -> threading.Thread:
    """Sends SIGKILL to `process` as soon as `path` exists (watched in a thread of its own)."""
    def watch():
        deadline = time.time() + 120
        while not path.exists() and process.poll() is None and time.time() < deadline:
            time.sleep(0.02)
        process.send_signal(signal.SIGKILL)

    watcher = threading.Thread(target=watch)
    watcher.start()
    return watcher


def test_a_killed_generator_and_a_killed_training_resume_to_uninterrupted_results(
        reference, tmp_path, capsys):
    """kill -9 of needles-make-nmnist after its first shard and of needles-train during epoch
    2 (started together: their TensorFlow start-ups overlap), then the same work again: shards
    byte-identical to an uninterrupted generation, the history to an uninterrupted run's."""
    out = tmp_path / "data"
    generator = start_binary("make_nmnist", "--canvas_size=32", "--num_clutter=0",
                             "--train_duplicates=1", "--duplicates=1", f"--output_dir={out}",
                             "--workers=1", "--noprogress")
    settings = dict(receptive_field=9, blocks=(1, 1, 1, 1), width_scale=1 / 16,
                    normalization=False, epochs=2,
                    batch_size=16, train_size=96, reference_size=0, optimizer="adam",
                    learning_rate=1e-3, lr_milestones=(), log_images=0, deterministic=True)
    flags = [f"--data_dir={reference}", f"--model_dir={tmp_path / 'run'}", "--receptive_field=9",
             "--blocks=1,1,1,1", "--width_scale=0.0625", "--nonormalization", "--epochs=2",
             "--batch_size=16", "--train_size=96", "--reference_size=0", "--optimizer=adam",
             "--learning_rate=1e-3", "--lr_milestones=", "--log_images=0", "--deterministic"]
    trainer = start_binary("train", *flags)
    watchers = [kill_when_exists(generator, out / metadata.PARTIAL_FILE),
                kill_when_exists(trainer, tmp_path / "run" / run_dir.CHECKPOINT_DIR /
                                 run_dir.CHECKPOINT_STATE)]  # epoch 1 committed
    uninterrupted = TrainConfig(reference, str(tmp_path / "uninterrupted"), **settings)
    train(uninterrupted, verbose=0)  # meanwhile
    for watcher, process in zip(watchers, (generator, trainer)):
        watcher.join()
        process.communicate(timeout=60)
        assert process.returncode == -signal.SIGKILL
    assert not (out / metadata.METADATA_FILE).exists()

    # the same commands' work, in this process (no second TensorFlow start)
    nmnist.generate_nmnist(str(out), canvas_size=32, num_clutter=0, num_shards=8,
                           progress=False, duplicates=DUPLICATES)
    assert shard_bytes(out) == shard_bytes(reference)
    assert not [name for name in os.listdir(out) if ".tmp-" in name]
    capsys.readouterr()
    train(TrainConfig(reference, str(tmp_path / "run"), **settings), verbose=2)
    assert "resuming at epoch 2 of 2" in capsys.readouterr().out
    ours, theirs = (cb.read_history(os.path.join(d, run_dir.METRICS))
                    for d in (tmp_path / "run", uninterrupted.model_dir))
    assert [row["epoch"] for row in ours] == [1, 2]
    for row, expected in zip(ours, theirs, strict=True):
        for key in ("loss", "accuracy", "val_loss", "val_accuracy", "learning_rate"):
            assert row[key] == pytest.approx(expected[key], rel=1e-5, abs=1e-6), (row, key)
