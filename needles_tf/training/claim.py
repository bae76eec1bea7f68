"""Taking a model dir for a run: writable, held by this process alone, and holding this run
(the same settings) or none; --micro_batch_size=auto resolved as the run first recorded it."""

from __future__ import annotations

import contextlib
import dataclasses
import os

from needles_tf import atomic, dir_lock, run_dir
from needles_tf.models.bagnet import STAGE_BLOCKS
from needles_tf.training import callbacks as cb
from needles_tf.training import cluster
from needles_tf.training.config import (
    RUNTIME_SETTINGS,
    TrainConfig,
    TrainingError,
    build_model,
    check_input_size,
)
from needles_tf.training.data import split_info
from needles_tf.training.memory import auto_micro_batch


def claim(config: TrainConfig, overwrite: bool, holding: contextlib.ExitStack,
          replicas: int = 1) -> tuple[TrainConfig, int]:
    """Takes the model dir for this process (held until `holding` closes); returns the config
    (micro_batch_size resolved for one of `replicas` devices) and the epochs already done, or
    cluster.FINISHED."""
    try:
        os.makedirs(config.model_dir, exist_ok=True)
        probe = os.path.join(config.model_dir, f".write-test-{os.getpid()}")
        open(probe, "w").close()
        os.remove(probe)
    except OSError as e:
        raise TrainingError(
            f"model_dir {config.model_dir!r} is not writable: {e.strerror}") from None
    try:
        holding.enter_context(dir_lock.exclusive(config.model_dir))
    except dir_lock.DirectoryBusy as e:
        raise TrainingError(str(e)) from None
    config = _resolve_micro_batch(config, overwrite, replicas)
    same_run = _check_model_dir(config, overwrite)
    summary_path = os.path.join(config.model_dir, run_dir.SUMMARY)
    if same_run and os.path.exists(summary_path):
        if run_dir.read_summary(config.model_dir).get("status") == "finished":
            return config, cluster.FINISHED
    cb.EpochCheckpoint.publish_best(os.path.join(config.model_dir, run_dir.CHECKPOINT_DIR))
    return config, run_dir.committed_epochs(config.model_dir)


def _check_model_dir(config: TrainConfig, overwrite: bool) -> bool:
    """Checks the (locked) model dir holds no other run; returns whether it holds this run. A
    run with other settings is refused once it has finished an epoch; before that (a start
    that failed) or with `overwrite` its files are removed and the run starts afresh."""
    atomic.remove_stale_temporaries(config.model_dir)
    path = os.path.join(config.model_dir, run_dir.CONFIG)
    if not os.path.exists(path):
        if overwrite:
            run_dir.remove_run(config.model_dir)
        return False
    # runs from before --blocks and --stop_after_fit had these settings
    saved = {"blocks": list(STAGE_BLOCKS), "stop_after_fit": 0, **run_dir.read_json(path)}
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


def _resolve_micro_batch(config: TrainConfig, overwrite: bool, replicas: int) -> TrainConfig:
    """micro_batch_size="auto": the value this run recorded when it started (a resume trains
    as it began), else the largest micro-batch estimated to fit the device."""
    if config.micro_batch_size != "auto":
        return config
    path = os.path.join(config.model_dir, run_dir.CONFIG)
    saved = run_dir.read_json(path).get("micro_batch_size") if os.path.exists(path) else None
    share = max(config.batch_size // replicas, 1)  # each device's part of the batch
    if isinstance(saved, int) and share % saved == 0 and not overwrite:
        return dataclasses.replace(config, micro_batch_size=saved)
    info = split_info(config, "train")
    check_input_size(info, config)
    model = build_model(config, info["channels"])
    micro = auto_micro_batch(model, info["height"], info["width"], share,
                             config.remat, config.optimizer,
                             bytes_per_value=2 if config.precision.startswith("mixed") else 4,
                             tile_size=config.tile_size)
    return dataclasses.replace(config, micro_batch_size=micro)
