"""Runs and datasets a researcher can trust: no stale results, no lost work, one clear line for a
user mistake (issue 11). Tiny data and models; real files, real kills of real writers."""

import csv
import errno
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from dying_worker import DieAt, DyingSlide
from tiny_runs import Interrupt, finish, make_run_dir, start_binary, tiny_nmnist

from needles_tf import atomic, dir_lock, run_dir
from needles_tf.data import metadata
from needles_tf.input import make_dataset, order
from needles_tf.training import callbacks as cb
from needles_tf.training.trainer import TrainConfig, TrainingError, train


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return tiny_nmnist(str(tmp_path_factory.mktemp("trust_data")), 0,
                       {"train": 1, "val": 1, "test": 1})


def tiny(data_dir, model_dir, **overrides):
    settings = dict(receptive_field=9, blocks=(1, 1, 1, 1), width_scale=1 / 16,
                    normalization=False, epochs=2,
                    batch_size=32, train_size=64, reference_size=0, optimizer="adam",
                    learning_rate=1e-3, lr_milestones=(), log_images=0, deterministic=True)
    return TrainConfig(str(data_dir), str(model_dir), **{**settings, **overrides})


def metrics_rows(model_dir):
    with open(os.path.join(model_dir, run_dir.METRICS)) as f:
        return list(csv.DictReader(f))


def test_resume_refusal_and_overwrite_of_a_run(data_dir, tmp_path, monkeypatch):
    """Resume, refusal and --overwrite; the last run also checks that where training needs
    micro-batches to fit, the final evaluation does not use the full batch (it would run out
    of memory exactly there)."""
    from needles_tf.training import data as run_data

    model_dir = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        train(tiny(data_dir, model_dir), verbose=0, extra_callbacks=[Interrupt(1)])
    first_session = float(metrics_rows(model_dir)[0]["wall_seconds"])
    assert first_session > 0
    # a setting that changes no result may change on a resume (after an out-of-memory kill)
    summary = train(tiny(data_dir, model_dir, cache="none"), verbose=0)
    walls = [float(row["wall_seconds"]) for row in metrics_rows(model_dir)]
    assert walls[0] == first_session and walls[1] > first_session  # counted across sessions
    assert summary["wall_seconds"] > walls[-1] and summary["config"]["cache"] == "none"
    made_by = summary["provenance"]  # what produced the result
    assert made_by["tensorflow"] and made_by["keras"] and made_by["numpy"]
    assert made_by["replicas"] == 1 and made_by["devices"].get("CPU", 0) >= 1
    assert made_by["onednn"] and "git_commit" in made_by
    # a finished run with other settings is refused, not silently reported
    with pytest.raises(TrainingError, match="other settings.*epochs: 2 -> 1.*--overwrite"):
        train(tiny(data_dir, model_dir, epochs=1), verbose=0)
    batches = []

    def recording(model, data, split, batch_size, *rest):
        batches.append(batch_size)
        return real_evaluate(model, data, split, batch_size, *rest)

    real_evaluate = run_data.evaluate
    monkeypatch.setattr(run_data, "evaluate", recording)
    again = train(tiny(data_dir, model_dir, epochs=1, micro_batch_size=8), verbose=0,
                  overwrite=True)
    assert again["epochs"] == 1 and len(metrics_rows(model_dir)) == 1
    assert batches == [8, 8] and again["config"]["batch_size"] == 32


def test_a_start_that_failed_leaves_the_directory_reusable(data_dir, tmp_path):
    model_dir = tmp_path / "run"
    with pytest.raises(ValueError):
        train(tiny(data_dir, model_dir, width_scale=0.3), verbose=0)  # 64 * 0.3: no width
    assert not os.path.exists(model_dir / run_dir.CONFIG)
    # a config without any finished epoch (a start stopped before it) blocks nothing
    for width in (1 / 8, 1 / 16):
        with pytest.raises(KeyboardInterrupt):
            train(tiny(data_dir, model_dir, width_scale=width), verbose=0,
                  extra_callbacks=[Interrupt(0)])
        assert json.loads((model_dir / run_dir.CONFIG).read_text())["width_scale"] == width


def test_a_kill_before_the_epoch_commit_leaves_the_best_model_of_a_committed_epoch(tmp_path):
    model_dir = tmp_path / "run"
    checkpoint_dir = str(model_dir / run_dir.CHECKPOINT_DIR)
    model, _ = make_run_dir(model_dir)  # best.keras of "epoch 1"
    model.compile(optimizer="adam", loss="mse")
    recorder = cb.EpochRecorder(str(model_dir), [], start_time=0.0)
    checkpoint = cb.EpochCheckpoint(checkpoint_dir, recorder)
    for callback in (recorder, checkpoint):
        callback.set_model(model)
    logs = {"loss": 0.5, "val_accuracy": 0.6}
    recorder.on_epoch_end(0, dict(logs))
    checkpoint.on_epoch_end(0, dict(logs))  # committed: its best model is published
    assert (model_dir / run_dir.BEST_MODEL).exists()
    published = (model_dir / run_dir.BEST_MODEL).read_bytes()
    model.get_layer("logits").bias.assign(np.array([5.0, -5.0], np.float32))
    recorder.on_epoch_end(1, {"loss": 0.4, "val_accuracy": 0.9})  # a better epoch 2 ...
    assert list((model_dir / run_dir.CHECKPOINT_DIR).glob("best-epoch-00002.keras"))
    # ... killed before its checkpoint: a resume discards epoch 2, its model too
    cb.EpochCheckpoint.publish_best(checkpoint_dir)
    assert cb.EpochCheckpoint.saved_state(checkpoint_dir)["epoch"] == 1
    assert (model_dir / run_dir.BEST_MODEL).read_bytes() == published
    assert not list((model_dir / run_dir.CHECKPOINT_DIR).glob("best-epoch-*"))


def test_incomplete_or_inconsistent_datasets_are_refused(data_dir, tmp_path):
    meta = json.loads(open(os.path.join(data_dir, metadata.METADATA_FILE)).read())
    cases = {
        "interrupted": (metadata.PARTIAL_FILE, meta, "incomplete dataset.*re-run the generator"),
        "not_complete": (metadata.METADATA_FILE, {**meta, "complete": False}, "incomplete"),
        "wrong_count": (metadata.METADATA_FILE, {**meta, "splits": {
            **meta["splits"], "val": {**meta["splits"]["val"],
                                      "count": meta["splits"]["val"]["count"] + 5}}},
            "split 'val' is inconsistent"),
    }
    for name, (file, content, message) in cases.items():
        directory = tmp_path / name
        directory.mkdir()
        (directory / file).write_text(json.dumps(content))
        with pytest.raises(metadata.DatasetError, match=message):
            metadata.read_metadata(str(directory))
    # a dataset.json whose image size does not match its shards
    moved = tmp_path / "resized"
    moved.mkdir()
    for name in os.listdir(data_dir):
        os.link(os.path.join(data_dir, name), moved / name)
    os.remove(moved / metadata.METADATA_FILE)
    (moved / metadata.METADATA_FILE).write_text(json.dumps(
        {**meta, "image": {**meta["image"], "height": 48, "width": 48}}))
    with pytest.raises(metadata.DatasetError, match="holds 32 x 32 x 1 images.*48 x 48 x 1"):
        make_dataset(str(moved), "val", 8, training=False)


def test_oversampling_a_class_with_no_image_is_an_error_not_a_hang():
    labels = np.tile([0, 1], 50)
    with pytest.raises(ValueError, match="selects 0 positives.*raise train_size to 50"):
        order.select_indices(labels, 40, 0.01, seed=0)


def test_a_split_short_of_one_class_trains_on_the_largest_selection_with_the_balance():
    # an nCAMELYON split short of negatives: the default (balance 0.5) used to stop training
    assert order.selection_counts(700, 300, None, 0.5) == (300, 300)
    assert order.selection_counts(50, 50, None, 0.3) == (21, 50)
    assert order.selection_counts(50, 50, None, None) == (50, 50)
    with pytest.raises(ValueError, match="the split has 700 and 300; lower --train_size") as e:
        order.selection_counts(700, 300, 1000, 0.5)
    assert "nmnist" not in str(e.value)


def test_stale_temporaries_of_dead_writers_are_removed(tmp_path):
    finished = subprocess.Popen(["true"])  # a writer's PID that has exited
    finished.wait()
    stale = tmp_path / f"train-00000-of-00001.tfrecord.tmp-{finished.pid}"
    live = tmp_path / f"val-00000-of-00001.tfrecord.tmp-{os.getpid()}"
    stale.write_bytes(b"half")
    live.write_bytes(b"writing")
    assert atomic.remove_stale_temporaries(str(tmp_path)) == [str(stale)]
    assert live.exists() and not stale.exists()


def test_evaluate_prints_before_writing_names_files_by_dataset_and_warns_on_unfinished(
        data_dir, tmp_path):
    """needles-evaluate shows metrics it cannot write and names its file by dataset; it warns
    on an unfinished run (a best model, no summary), as needles-export does (test_export)."""
    _, model_dir = make_run_dir(tmp_path / "killed")  # a best model but no summary: unfinished
    dataset = os.path.basename(os.path.normpath(data_dir))
    named = os.path.join(model_dir, f"eval_val_{dataset}.json")
    os.mkdir(named)  # a directory where the metrics go: they cannot be written
    result = finish(start_binary("evaluate", f"--model_dir={model_dir}",
                                 f"--data_dir={data_dir}", "--split=val"), timeout=120)
    assert result.returncode == 1
    assert "has not finished" in result.stderr and "Traceback" not in result.stderr
    assert "accuracy" in result.stdout  # the metrics were shown although not saved
    assert result.stderr.strip().splitlines()[-1].startswith(
        f"needles-evaluate: error: metrics not written to {named}")


def test_export_to_an_unwritable_place_is_one_clear_error(tmp_path, monkeypatch):
    from needles_tf.serving.export import export_saved_model

    model, _ = make_run_dir(tmp_path / "run")
    real_mkdir = os.mkdir

    def read_only(path, *args, **kwargs):  # what a read-only file system answers
        if str(path).startswith(str(tmp_path / "exports")):
            raise PermissionError(30, "Read-only file system", str(path))
        return real_mkdir(path, *args, **kwargs)

    (tmp_path / "exports").mkdir()
    monkeypatch.setattr(os, "mkdir", read_only)
    with pytest.raises(OSError, match="exports: cannot write the SavedModel there"):
        export_saved_model(model, str(tmp_path / "exports" / "saved_model"))
    assert os.listdir(tmp_path / "exports") == []


def test_a_dying_generator_worker_is_one_clear_error_and_a_rerun_completes(tmp_path):
    from needles_tf.generation import writer

    def write(make_example):
        return writer.write_dataset(
            str(tmp_path), kind="test", params={}, image={"height": 1, "width": 1,
                                                          "channels": 1},
            split_sizes={"train": 256, "val": 0, "test": 0}, make_example=make_example,
            num_shards=4, workers=2, progress=False)

    with pytest.raises(metadata.DatasetError, match="a worker process died while making "
                       "train-000.*re-run the same command"):
        write(DieAt(200))
    kept = sorted(p.name for p in tmp_path.glob("train-*.tfrecord"))
    assert kept and len(kept) < 4  # the finished shards stay
    assert write(DieAt(None))["splits"]["train"]["count"] == 256
    assert not list(tmp_path.glob("*.tmp-*"))


def test_a_dying_slide_planning_worker_is_one_clear_error(tmp_path):
    from needles_tf.generation import camelyon, ncamelyon_plans

    tasks = [("negatives", DyingSlide(name), None, 4, str(tmp_path)) for name in ("a", "b")]
    with pytest.raises(camelyon.SlideError, match="a worker process died while planning the "
                       "negative slides .*re-run the same command"):
        ncamelyon_plans.run_slide_tasks(tasks, workers=2, strict=False, progress=False,
                                        desc="negative slides", skipped=[])


def test_tied_validation_accuracy_goes_to_the_lower_validation_loss():
    early = {"epoch": 2, "val_accuracy": 0.925, "val_loss": 0.29}
    late = {"epoch": 6, "val_accuracy": 0.925, "val_loss": 0.18}
    better = {"epoch": 3, "val_accuracy": 0.93, "val_loss": 0.5}
    assert max([early, late], key=cb.selection_key) is late
    assert max([early, late, better], key=cb.selection_key) is better
    assert cb.selection_key({"val_accuracy": float("nan")}) < cb.selection_key(early)


def test_a_model_dir_in_use_by_a_live_process_is_refused_and_freed_by_its_death(data_dir,
                                                                                  tmp_path):
    model_dir = tmp_path / "run"
    model_dir.mkdir()
    holder = subprocess.Popen(  # a second needles-train, as far as the lock goes
        [sys.executable, "-c", "import sys, time\nfrom needles_tf import dir_lock\n"
         f"with dir_lock.exclusive({str(model_dir)!r}):\n"
         "    print('held', flush=True)\n    time.sleep(120)"],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(TrainingError, match=rf"in use by another process \(pid {holder.pid}\)"):
            train(tiny(data_dir, model_dir))
        assert os.listdir(model_dir) == [dir_lock.LOCK_FILE]  # nothing of a run written
    finally:
        holder.kill()  # as kill -9: the kernel releases the lock with the process
        holder.wait()
    with dir_lock.exclusive(str(model_dir)):
        pass


def test_a_file_system_without_locks_warns_and_goes_on(tmp_path, monkeypatch):
    def no_locks(fd, operation):
        raise OSError(errno.ENOLCK, os.strerror(errno.ENOLCK))

    monkeypatch.setattr(dir_lock.fcntl, "flock", no_locks)
    with pytest.warns(UserWarning, match="does not support locks"), \
            dir_lock.exclusive(str(tmp_path)):
        ran = True
    assert ran


def test_the_final_line_says_fit_or_not_never_none():
    from needles_tf.bin.train import result_line

    summary = {"best_epoch": 5, "epochs": 6, "val_accuracy": 0.925, "test_accuracy": 0.86,
               "epochs_to_fit": None, "final_train_accuracy": 0.9087, "wall_seconds": 403.2}
    assert result_line("runs/a", summary) == (
        "runs/a: best epoch 5 of 6, val accuracy 0.9250, test accuracy 0.8600, not fit "
        "(training accuracy 0.9087 < 0.99), 403 s")
    fitted = result_line("runs/a", {**summary, "epochs_to_fit": 3})
    assert "fit (training accuracy >= 0.99) at epoch 3, 403 s" in fitted and "None" not in fitted
