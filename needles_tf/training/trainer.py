"""One training run of the paper's protocol: data -> model -> training loop -> run directory.

`train(TrainConfig(...))` builds the BagNet for the dataset, trains it with the step schedule
(on one device, several replicas or several workers: training/loop.py), validates after every
epoch, keeps the best validation model, resumes an interrupted run from its
last finished epoch (same history as an uninterrupted run with the same seed), and finally
reports validation and test metrics of the best model in summary.json.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import time
from typing import Any, Sequence

import keras
import tensorflow as tf

from needles_tf import atomic, run_dir
from needles_tf.input.order import selection_counts
from needles_tf.models.remat import rematerialised
from needles_tf.models.streaming import StreamedClassifier
from needles_tf.training import callbacks as cb
from needles_tf.training import cluster, devices
from needles_tf.training.claim import claim
from needles_tf.training.config import TrainConfig, TrainingError, build_model, check_input_size
from needles_tf.training.data import evaluation_batches, split_info, training_batches
from needles_tf.training.loop import TrainLoop
from needles_tf.training.optimizers import make_optimizer
from needles_tf.training.schedule import scale_epochs, step_learning_rate
from needles_tf.training.stopping import StopAfterFit, fit_streak, stopped_epoch
from needles_tf.training.summary import finish_run
from needles_tf.training.tensorboard import log_input_images

__all__ = ["TrainConfig", "TrainingError", "train"]


def _jit(setting: str, streamed: bool) -> bool:
    if streamed:  # XLA compiles static shapes; a tile loop's tiles differ at the edges
        if setting == "true":
            raise ValueError("jit_compile=true cannot compile a tile-streamed step (tiles of "
                             "different shapes in one loop); leave --jit_compile at auto")
        return False
    if setting == "auto":
        return devices.num_gpus() > 0
    if setting in ("true", "false"):
        return setting == "true"
    raise ValueError(f"jit_compile must be auto, true or false; got {setting!r}")


def _micro_batches(config: TrainConfig, strategy: tf.distribute.Strategy) -> tuple[int, int]:
    """(images per forward pass on one replica, micro-batches per replica and global batch)."""
    replicas = strategy.num_replicas_in_sync
    if config.batch_size % replicas:
        raise ValueError(f"batch_size ({config.batch_size}) must be a multiple of the "
                         f"{replicas} replicas (each takes an equal share of a batch)")
    share = config.batch_size // replicas
    micro = config.micro_batch_size or share
    if micro < 1 or share % micro:
        whose = f"each replica's share of the batch ({share})" if replicas > 1 else \
            f"batch_size ({config.batch_size})"
        raise ValueError(f"{whose} must be a multiple of micro_batch_size ({micro})")
    return micro, share // micro


def train(config: TrainConfig, verbose: int | str = "auto",
          extra_callbacks: Sequence[keras.callbacks.Callback] = (),
          overwrite: bool = False) -> dict[str, Any]:
    """Runs (or resumes, or returns the result of a finished) training run; returns its summary.

    verbose: Keras' progress display (1 bar, 2 a line per epoch, 0 none); extra_callbacks run
    after ours, with the epoch logs complete; overwrite: start afresh in a model dir that holds
    a run (finished or not) with other settings.

    Under strategy="multi_worker" every worker calls this with the same config: the chief
    (training/cluster.py) holds and writes the model dir, the others train with it, starting
    where the chief's checkpoint says, and return {"status": "worker", ...}.

    Raises:
      TrainingError: the model dir holds another run, is in use by another process, is not
        writable, or training diverged; on a worker, the chief could not start.
      ValueError (metadata.DatasetError for dataset problems): bad settings or data.
    """
    # first: a multi-worker strategy connects the workers before other TensorFlow work
    strategy = devices.make_strategy(config.strategy)
    try:
        return _train_with(strategy, config, verbose, extra_callbacks, overwrite)
    except cluster.LOST_WORKER as e:
        if cluster.num_workers(strategy) == 1:
            raise
        done = run_dir.committed_epochs(config.model_dir)
        raise TrainingError(
            f"a worker of the cluster stopped or cannot be reached ({_first_line(e)}); the run "
            f"is kept as of epoch {done}: start every worker again with the same command to "
            "resume") from None


def _train_with(strategy: tf.distribute.Strategy, config: TrainConfig, verbose: int | str,
                extra_callbacks: Sequence[keras.callbacks.Callback],
                overwrite: bool) -> dict[str, Any]:
    """train() under `strategy`: the chief takes the model dir and tells the workers where to
    start; all train; the workers wait for the chief's final evaluation."""
    chief = cluster.is_chief(strategy)
    with contextlib.ExitStack() as holding:
        try:
            config, start = (claim(config, overwrite, holding, strategy.num_replicas_in_sync)
                             if chief else (config, 0))
        except BaseException:
            cluster.from_chief(strategy, cluster.FAILED)
            raise
        start = cluster.from_chief(strategy, start)
        if start == cluster.FAILED:
            raise TrainingError("the chief worker could not start the run (see its output)")
        # the chief's micro-batch ("auto" resolved, or a resumed run's)
        micro = cluster.from_chief(strategy, (config.micro_batch_size or 0) if chief else 0)
        config = dataclasses.replace(config, micro_batch_size=micro or None)
        if start == cluster.FINISHED:
            return (run_dir.read_summary(config.model_dir) if chief
                    else {"status": "worker", "model_dir": config.model_dir})
        result = _train(config, strategy, start, chief, verbose, extra_callbacks)
        # the workers wait for the chief's final evaluation: no process leaves the cluster
        # while another still works in it
        cluster.from_chief(strategy, 0)
        return result


def _train(config: TrainConfig, strategy: tf.distribute.Strategy, initial_epoch: int,
           chief: bool, verbose: int | str,
           extra_callbacks: Sequence[keras.callbacks.Callback]) -> dict[str, Any]:
    """Trains from `initial_epoch` on; the chief (which holds the model dir) writes the run."""
    session_start = time.time()
    info = split_info(config, "train")
    check_input_size(info, config)

    keras.utils.set_random_seed(config.seed)
    if config.deterministic:  # reproducible to the bit, at some cost in speed
        tf.config.experimental.enable_op_determinism()
    policy = devices.set_precision(config.precision)
    micro_batch, accumulation = _micro_batches(config, strategy)
    epochs, milestones = scale_epochs(config.epochs, config.lr_milestones, config.train_size,
                                      config.reference_size)
    schedule = step_learning_rate(config.learning_rate, milestones, config.lr_decay)

    images_per_epoch = info["count"] if config.noise else sum(selection_counts(
        info["positives"], info["negatives"], config.train_size, config.class_balance))
    if verbose and images_per_epoch < info["count"] and config.train_size is None:
        print(f"class_balance {config.class_balance:g}: training on {images_per_epoch} of the "
              f"{info['count']} training images (the largest selection with that balance)",
              flush=True)

    with strategy.scope():
        model = build_model(config, info["channels"])
        # the classifier is saved and checkpointed; `trained` (itself, or a twin that shares its
        # weights and optimizer and recomputes activations) is what the loop trains
        trained = rematerialised(model, config.remat)
        streamed = _streamed(model, config)
        optimizer = make_optimizer(config.optimizer, config.learning_rate)
        for compiled in [model] if trained is model else [model, trained]:
            compiled.compile(optimizer=optimizer,
                             loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                             metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy")])
        # Eagerly: left to the first step (as Keras does without a distribution strategy), the
        # optimizer's variables are created inside the traced train function, which TensorFlow
        # then traces twice; that was half the start of a short run (67 s of a profiled 120).
        optimizer.build(model.trainable_variables)
    checkpoint_dir = os.path.join(config.model_dir, run_dir.CHECKPOINT_DIR)
    if initial_epoch:  # the chief's checkpoint, on every worker
        cb.EpochCheckpoint.load(model, checkpoint_dir, initial_epoch)
    elif config.init_from:
        _warm_start(model, config.init_from)
    # every worker reads the history (the chief's model dir): the stop rule counts from it
    history = [row for row in cb.read_history(os.path.join(config.model_dir, run_dir.METRICS))
               if row["epoch"] <= initial_epoch]
    # the last epoch to train: the cap, or none more where the stop rule ended the run before
    # a kill kept it from writing its summary
    until = (initial_epoch if stopped_epoch(history, config.stop_after_fit) is not None
             else epochs)
    if initial_epoch and verbose:
        print(f"resuming at epoch {initial_epoch + 1} of {epochs}" if initial_epoch < until
              else f"{initial_epoch} epochs are trained (of {epochs}); evaluating the best model",
              flush=True)
    train_ds, steps_per_epoch, images_per_epoch = _train_input(
        config, strategy, images_per_epoch, initial_epoch, until)
    guard = cb.NanGuard()
    callbacks = [guard, cb.EpochTimer(images_per_epoch)]
    if config.stop_after_fit:
        callbacks.append(StopAfterFit(config.stop_after_fit,
                                      fit_streak([row["accuracy"] for row in history])))
    if chief:
        # wall time counts across resumes: the finished epochs' time, then this session's
        start_time = session_start - (history[-1].get("wall_seconds", 0.0) if history else 0.0)
        log_dir = os.path.join(config.model_dir, run_dir.LOG_DIR)
        if initial_epoch == 0 and config.log_images:  # a dataset of its own: train_ds's order
            log_input_images(log_dir, evaluation_batches(config, "train", config.log_images,
                                                         cache="none", verify=False))
        # only now, with data and model checked: a start that fails leaves no settings behind
        atomic.write_json(os.path.join(config.model_dir, run_dir.CONFIG), config.to_json())
        val_ds = evaluation_batches(config, "val", micro_batch, cache=config.cache)
        recorder = cb.EpochRecorder(config.model_dir, history, start_time, classifier=model)
        callbacks += [cb.ValidationMetrics(val_ds, classifier=model, tile_size=config.tile_size),
                      keras.callbacks.LearningRateScheduler(schedule), recorder,
                      cb.EpochCheckpoint(checkpoint_dir, recorder, classifier=model),
                      keras.callbacks.TensorBoard(log_dir, write_graph=False)]
    else:  # a worker keeps the schedule and writes nothing
        callbacks.append(keras.callbacks.LearningRateScheduler(schedule))
    if initial_epoch < until:
        loop = TrainLoop(trained, optimizer, strategy, micro_batch, accumulation,
                         jit_compile=_jit(config.jit_compile, streamed is not None),
                         streamed=streamed)
        try:
            loop.fit(train_ds, until, initial_epoch, steps_per_epoch,
                     [*callbacks, *extra_callbacks], verbose)
        except OSError as e:  # a full disk or quota while writing the epoch's files
            done = run_dir.committed_epochs(config.model_dir)
            raise TrainingError(
                f"cannot write in {config.model_dir} ({e.strerror or e}); the run is kept as of "
                f"epoch {done}: make room and re-run the same command to resume") from None
    if guard.diverged_at is not None:
        raise TrainingError(
            f"the training loss became NaN/inf in epoch {guard.diverged_at + 1}; the last good "
            f"checkpoint (epoch {guard.diverged_at}) is kept in {checkpoint_dir}; lower "
            "--learning_rate or use --precision=float32")
    if not chief:
        return {"status": "worker", "model_dir": config.model_dir, "epochs": epochs}
    return finish_run(config, model, recorder.history, policy, strategy,
                   epochs, images_per_epoch, start_time, micro_batch)


def _streamed(model: keras.Model, config: TrainConfig) -> StreamedClassifier | None:
    """The classifier's streamed parts for --tile_size (None without it).

    Raises:
      ValueError: instance normalisation, a tile below the receptive field, --remat too
        (a streamed step holds one tile's activations already), or --score_detection (its
        saliency is an input gradient of the whole image: the memory streaming avoids).
    """
    if not config.tile_size:
        return None
    if config.score_detection:
        raise ValueError(f"score_detection and tile_size={config.tile_size}: the detection "
                         "scores come from whole-image input-gradient saliency, which needs the "
                         "memory that streaming avoids; leave out --score_detection")
    if config.remat != "none":
        raise ValueError(f"remat={config.remat} and tile_size={config.tile_size}: choose one; "
                         "a streamed step keeps one tile's activations (a smaller tile needs "
                         "less memory)")
    return StreamedClassifier(model, config.tile_size)


def _first_line(error: Exception) -> str:
    message = getattr(error, "message", None) or str(error)
    return message.strip().splitlines()[0] if message.strip() else type(error).__name__


def _train_input(config: TrainConfig, strategy: tf.distribute.Strategy, images_per_epoch: int,
                 initial_epoch: int, epochs: int) -> tuple[Any, int, int]:
    """(distributed training batches of epochs initial_epoch .. epochs - 1, steps per epoch,
    images per epoch).

    Each epoch's order depends on (seed, epoch) alone: a resumed run sees what an uninterrupted
    one would, and every replica takes its share of each global batch of it, so the training
    does not depend on the number of replicas or workers.
    """
    elements = {}

    def worker_input(context: tf.distribute.InputContext) -> tf.data.Dataset:
        ds = training_batches(config, (initial_epoch, epochs), context)
        local_replicas = context.num_replicas_in_sync // context.num_input_pipelines
        elements["per_step"], elements["count"] = local_replicas, int(ds.cardinality())
        return ds

    distributed = strategy.distribute_datasets_from_function(worker_input)
    steps_per_epoch = elements["count"] // elements["per_step"] // max(epochs - initial_epoch, 1)
    if not steps_per_epoch and epochs > initial_epoch:
        raise ValueError(f"the training set ({images_per_epoch} images) gives no whole batch of "
                         f"{config.batch_size} for the {strategy.num_replicas_in_sync} replicas "
                         "(a streamed split, --cache=none, trains on whole batches only)")
    # a streamed split under several replicas leaves out the last, partial batch
    return (distributed, steps_per_epoch,
            min(images_per_epoch, steps_per_epoch * config.batch_size))


def _warm_start(model: keras.Model, run: str) -> None:
    """Starts `model` from the weights of another run's best model (same architecture)."""
    source = run_dir.load_best_model(run)
    if [w.shape for w in source.weights] != [w.shape for w in model.weights]:
        raise TrainingError(
            f"init_from {run!r}: its model {source.name} ({source.count_params()} parameters) "
            f"does not match this run's {model.name} ({model.count_params()} parameters); "
            "use the same receptive field, blocks, width, pooling, normalisation and channels")
    model.set_weights(source.get_weights())


