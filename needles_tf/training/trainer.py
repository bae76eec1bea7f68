"""One training run of the paper's protocol: data -> model -> fit -> run directory.

`train(TrainConfig(...))` builds the BagNet for the dataset, fits it with the step schedule,
validates after every epoch, keeps the best validation model, resumes an interrupted run from its
last finished epoch (same history as an uninterrupted run with the same seed), and finally
reports validation and test metrics of the best model in summary.json.
"""

from __future__ import annotations

import dataclasses
import os
import time
from typing import Any, Sequence

import keras
import tensorflow as tf

from needles_tf import atomic, dir_lock, provenance, run_dir
from needles_tf.evaluation.evaluate import evaluate
from needles_tf.input import dataset_info, make_dataset
from needles_tf.input.order import selection_counts
from needles_tf.models import build_classifier, min_input_size
from needles_tf.models.bagnet import STAGE_BLOCKS, resolve_k3
from needles_tf.models.remat import rematerialised
from needles_tf.training import callbacks as cb
from needles_tf.training import devices
from needles_tf.training.memory import auto_micro_batch
from needles_tf.training.optimizers import make_optimizer
from needles_tf.training.schedule import REFERENCE_SIZE, scale_epochs, step_learning_rate
from needles_tf.training.tensorboard import log_input_images

CONFIG = run_dir.CONFIG


class TrainingError(RuntimeError):
    """A run that cannot start or continue; the message says why and what to do."""


@dataclasses.dataclass
class TrainConfig:
    """Every knob of a run (the needles-train flags)."""

    data_dir: str
    model_dir: str
    receptive_field: int | None = 33
    k3: Sequence[int] | None = None
    blocks: Sequence[int] = STAGE_BLOCKS
    width_scale: float = 1.0
    pooling: str = "max"
    normalization: bool = True
    epochs: int = 200
    batch_size: int = 32
    micro_batch_size: int | str | None = None  # "auto": the largest that fits (recorded)
    learning_rate: float = 5e-5
    lr_milestones: Sequence[int] = (80, 120, 160)
    lr_decay: float = 0.1
    optimizer: str = "rmsprop"
    train_size: int | None = None
    reference_size: int = REFERENCE_SIZE
    class_balance: float | None = 0.5
    seed: int = 0
    precision: str = "auto"
    strategy: str = "auto"
    jit_compile: str = "auto"
    cache: str = "auto"
    deterministic: bool = False
    log_images: int = 8
    init_from: str | None = None
    remat: str = "none"

    def to_json(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["k3"] = list(resolve_k3(self.receptive_field if self.k3 is None else None, self.k3))
        d["blocks"] = list(self.blocks)
        d["lr_milestones"] = list(self.lr_milestones)
        d["data_dir"] = os.path.abspath(self.data_dir)
        d["model_dir"] = os.path.abspath(self.model_dir)
        d["init_from"] = self.init_from and os.path.abspath(self.init_from)
        return d


# How a run is carried out, not what it computes: a resume may change them (e.g. --cache=none
# after an out-of-memory kill).
RUNTIME_SETTINGS = ("cache", "log_images", "remat")
def _check_model_dir(config: TrainConfig, overwrite: bool) -> bool:
    """Checks the (locked) model dir holds no other run; returns whether it holds this run. A
    run with other settings is refused once it has finished an epoch; before that (a start
    that failed) or with `overwrite` its files are removed and the run starts afresh."""
    atomic.remove_stale_temporaries(config.model_dir)
    path = os.path.join(config.model_dir, CONFIG)
    if not os.path.exists(path):
        if overwrite:
            run_dir.remove_run(config.model_dir)
        return False
    saved = {"blocks": list(STAGE_BLOCKS), **run_dir.read_json(path)}  # runs before --blocks
    current = config.to_json()
    changed = {k: (saved.get(k), v) for k, v in current.items()
               if k not in RUNTIME_SETTINGS and saved.get(k) != v}
    if not changed and not overwrite:
        return True
    if run_dir.has_finished_epoch(config.model_dir) and not overwrite:
        what = ", ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in sorted(changed.items()))
        raise TrainingError(f"{config.model_dir} holds a run with other settings ({what}); "
                            "use a new --model_dir, or --overwrite to start afresh there")
    run_dir.remove_run(config.model_dir)
    return False


def _jit(setting: str) -> bool:
    if setting == "auto":
        return devices.num_gpus() > 0
    if setting in ("true", "false"):
        return setting == "true"
    raise ValueError(f"jit_compile must be auto, true or false; got {setting!r}")


def _accumulation_steps(config: TrainConfig, strategy: tf.distribute.Strategy) -> int:
    micro = config.micro_batch_size or config.batch_size
    if micro < 1 or config.batch_size % micro:
        raise ValueError(f"batch_size ({config.batch_size}) must be a multiple of "
                         f"micro_batch_size ({micro})")
    steps = config.batch_size // micro
    if steps > 1 and strategy.num_replicas_in_sync > 1:
        raise ValueError("gradient accumulation (micro_batch_size < batch_size) is not supported "
                         "by Keras under a multi-replica strategy; use --strategy=default or "
                         "give each replica batch_size / replicas images")
    return steps


def _build_model(config: TrainConfig, channels: int) -> keras.Model:
    return build_classifier(channels, config.receptive_field, config.k3, config.width_scale,
                            config.pooling, normalization=config.normalization,
                            blocks=config.blocks)


def _resolve_micro_batch(config: TrainConfig, overwrite: bool) -> TrainConfig:
    """micro_batch_size="auto": the value this run recorded when it started (a resume trains
    as it began), else the largest micro-batch estimated to fit the device."""
    if config.micro_batch_size != "auto":
        return config
    path = os.path.join(config.model_dir, CONFIG)
    saved = run_dir.read_json(path).get("micro_batch_size") if os.path.exists(path) else None
    if isinstance(saved, int) and config.batch_size % saved == 0 and not overwrite:
        return dataclasses.replace(config, micro_batch_size=saved)
    info = dataset_info(config.data_dir, "train")
    _check_input_size(info, config)
    model = _build_model(config, info["channels"])
    micro = auto_micro_batch(model, info["height"], info["width"], config.batch_size,
                             config.remat, config.optimizer,
                             bytes_per_value=2 if config.precision.startswith("mixed") else 4)
    return dataclasses.replace(config, micro_batch_size=micro)


def _check_input_size(info: dict, config: TrainConfig) -> None:
    k3 = resolve_k3(config.receptive_field if config.k3 is None else None, config.k3)
    smallest = min_input_size(k3)
    if info["height"] and min(info["height"], info["width"]) < smallest:
        raise ValueError(f"{config.data_dir}: images of {info['height']}x{info['width']} are "
                         f"smaller than the model's minimum input size {smallest} (k3={k3})")


def train(config: TrainConfig, verbose: int | str = "auto",
          extra_callbacks: Sequence[keras.callbacks.Callback] = (),
          overwrite: bool = False) -> dict[str, Any]:
    """Runs (or resumes, or returns the result of a finished) training run; returns its summary.

    verbose: Keras' progress display (1 bar, 2 a line per epoch, 0 none); extra_callbacks run
    after ours, with the epoch logs complete; overwrite: start afresh in a model dir that holds
    a run (finished or not) with other settings.

    Raises:
      TrainingError: the model dir holds another run, is in use by another process, is not
        writable, or training diverged.
      ValueError (metadata.DatasetError for dataset problems): bad settings or data.
    """
    try:
        os.makedirs(config.model_dir, exist_ok=True)
        probe = os.path.join(config.model_dir, f".write-test-{os.getpid()}")
        open(probe, "w").close()
        os.remove(probe)
    except OSError as e:
        raise TrainingError(
            f"model_dir {config.model_dir!r} is not writable: {e.strerror}") from None
    try:
        with dir_lock.exclusive(config.model_dir):
            return _train(config, verbose, extra_callbacks, overwrite)
    except dir_lock.DirectoryBusy as e:
        raise TrainingError(str(e)) from None


def _train(config: TrainConfig, verbose: int | str,
           extra_callbacks: Sequence[keras.callbacks.Callback], overwrite: bool) -> dict[str, Any]:
    """train() in its model dir, which this process holds."""
    config = _resolve_micro_batch(config, overwrite)
    same_run = _check_model_dir(config, overwrite)
    summary_path = os.path.join(config.model_dir, run_dir.SUMMARY)
    if same_run and os.path.exists(summary_path):
        summary = run_dir.read_summary(config.model_dir)
        if summary.get("status") == "finished":
            return summary
    session_start = time.time()
    info = dataset_info(config.data_dir, "train")
    _check_input_size(info, config)

    keras.utils.set_random_seed(config.seed)
    if config.deterministic:  # reproducible to the bit, at some cost in speed
        tf.config.experimental.enable_op_determinism()
    policy = devices.set_precision(config.precision)
    strategy = devices.make_strategy(config.strategy)
    accumulation = _accumulation_steps(config, strategy)
    micro_batch = config.batch_size // accumulation
    epochs, milestones = scale_epochs(config.epochs, config.lr_milestones, config.train_size,
                                      config.reference_size)
    schedule = step_learning_rate(config.learning_rate, milestones, config.lr_decay)

    val_ds = make_dataset(config.data_dir, "val", micro_batch, training=False, cache=config.cache)
    images_per_epoch = sum(selection_counts(info["positives"], info["negatives"],
                                            config.train_size, config.class_balance))
    if verbose and images_per_epoch < info["count"] and config.train_size is None:
        print(f"class_balance {config.class_balance:g}: training on {images_per_epoch} of the "
              f"{info['count']} training images (the largest selection with that balance)",
              flush=True)

    with strategy.scope():
        model = _build_model(config, info["channels"])
        # the classifier is saved and checkpointed; `trained` (itself, or a twin that shares its
        # weights and optimizer and recomputes activations) is what fit trains
        trained = rematerialised(model, config.remat)
        optimizer = make_optimizer(config.optimizer, config.learning_rate, accumulation)
        for compiled in [model] if trained is model else [model, trained]:
            compiled.compile(optimizer=optimizer,
                             loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                             metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy")],
                             jit_compile=_jit(config.jit_compile))
        # Eagerly: left to the first step (as Keras does without a distribution strategy), the
        # optimizer's variables are created inside the traced train function, which TensorFlow
        # then traces twice; that was half the start of a short run (67 s of a profiled 120).
        optimizer.build(model.trainable_variables)
    checkpoint_dir = os.path.join(config.model_dir, run_dir.CHECKPOINT_DIR)
    initial_epoch = cb.EpochCheckpoint.restore(model, checkpoint_dir)
    if initial_epoch == 0 and config.init_from:
        _warm_start(model, config.init_from)
    if initial_epoch and verbose:
        print(f"resuming at epoch {initial_epoch + 1} of {epochs}", flush=True)
    history = [row for row in cb.read_history(os.path.join(config.model_dir, run_dir.METRICS))
               if row["epoch"] <= initial_epoch]
    # wall time counts across resumes: the finished epochs' time, then this session's
    start_time = session_start - (history[-1].get("wall_seconds", 0.0) if history else 0.0)
    log_dir = os.path.join(config.model_dir, run_dir.LOG_DIR)
    if initial_epoch == 0 and config.log_images:  # a separate dataset: train_ds's order is kept
        log_input_images(log_dir, make_dataset(config.data_dir, "train", config.log_images,
                                               training=False, verify=False, cache="none"))
    # Each epoch's order depends on (seed, epoch) alone: a resumed run sees what an
    # uninterrupted one would.
    train_ds = make_dataset(config.data_dir, "train", micro_batch, training=True,
                            train_size=config.train_size, class_balance=config.class_balance,
                            seed=config.seed, cache=config.cache,
                            deterministic=config.deterministic, epochs=(initial_epoch, epochs))
    steps_per_epoch = -(-images_per_epoch // micro_batch)
    # only now, with data and model checked: a start that fails leaves no settings behind
    atomic.write_json(os.path.join(config.model_dir, CONFIG), config.to_json())

    guard = cb.NanGuard()
    recorder = cb.EpochRecorder(config.model_dir, history, start_time, classifier=model)
    callbacks = [guard, cb.EpochTimer(images_per_epoch),
                 cb.ValidationMetrics(val_ds, classifier=model),
                 keras.callbacks.LearningRateScheduler(schedule),
                 recorder, cb.EpochCheckpoint(checkpoint_dir, recorder, classifier=model),
                 keras.callbacks.TensorBoard(log_dir, write_graph=False), *extra_callbacks]
    if initial_epoch < epochs:
        try:
            trained.fit(train_ds, epochs=epochs, initial_epoch=initial_epoch,
                        steps_per_epoch=steps_per_epoch, callbacks=callbacks, verbose=verbose,
                        shuffle=False)
        except OSError as e:  # a full disk or quota while writing the epoch's files
            done = (run_dir.checkpoint_state(config.model_dir) or {"epoch": 0})["epoch"]
            raise TrainingError(
                f"cannot write in {config.model_dir} ({e.strerror or e}); the run is kept as of "
                f"epoch {done}: make room and re-run the same command to resume") from None
    if guard.diverged_at is not None:
        raise TrainingError(
            f"the training loss became NaN/inf in epoch {guard.diverged_at + 1}; the last good "
            f"checkpoint (epoch {len(recorder.history)}) is kept in {checkpoint_dir}; lower "
            "--learning_rate or use --precision=float32")
    return _finish(config, model, recorder.history, policy, strategy,
                   epochs, images_per_epoch, start_time, micro_batch)


def _warm_start(model: keras.Model, run: str) -> None:
    """Starts `model` from the weights of another run's best model (same architecture)."""
    source = run_dir.load_best_model(run)
    if [w.shape for w in source.weights] != [w.shape for w in model.weights]:
        raise TrainingError(
            f"init_from {run!r}: its model {source.name} ({source.count_params()} parameters) "
            f"does not match this run's {model.name} ({model.count_params()} parameters); "
            "use the same receptive field, blocks, width, pooling, normalisation and channels")
    model.set_weights(source.get_weights())


def _finish(config: TrainConfig, model: keras.Model, history: list[dict], policy: str,
            strategy: tf.distribute.Strategy, epochs: int, images_per_epoch: int,
            start_time: float, batch_size: int) -> dict[str, Any]:
    """Evaluates the best model on val and test (at the training's micro-batch size, which is
    known to fit) and writes summary.json."""
    best = max(history, key=cb.selection_key)
    # the best epoch's weights into the trained model: its evaluation function is already
    # traced, where a model loaded from the file would be rebuilt and traced again
    model.load_weights(run_dir.best_model_path(config.model_dir))
    results = {split: evaluate(model, config.data_dir, split, batch_size)
               for split in ("val", "test")}
    fit_epoch = next((row["epoch"] for row in history if row["accuracy"] >= 0.99), None)
    train_seconds = sum(row["train_seconds"] for row in history)
    images = images_per_epoch * len(history)
    summary = {
        "status": "finished",
        "config": config.to_json(),
        "epochs": epochs,
        "parameters": model.count_params(),
        "precision": policy,
        "replicas": strategy.num_replicas_in_sync,
        "provenance": provenance.describe(strategy),
        "best_epoch": best["epoch"],
        "val_accuracy": results["val"]["accuracy"],
        "test_accuracy": results["test"]["accuracy"],
        "val": results["val"],
        "test": results["test"],
        "epochs_to_fit": fit_epoch,
        "final_train_accuracy": history[-1]["accuracy"],
        "wall_seconds": round(time.time() - start_time, 1),
        "train_seconds": round(train_seconds, 1),
        "train_images_per_second": round(images / train_seconds, 1) if train_seconds else None,
    }
    atomic.write_json(os.path.join(config.model_dir, run_dir.SUMMARY), summary)
    checkpoint_dir = os.path.join(config.model_dir, run_dir.CHECKPOINT_DIR)
    for name in os.listdir(checkpoint_dir) if os.path.isdir(checkpoint_dir) else ():
        os.remove(os.path.join(checkpoint_dir, name))
    return summary
