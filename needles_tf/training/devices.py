"""Distribution strategy and precision policy, chosen from what the machine has."""

from __future__ import annotations

import keras
import tensorflow as tf

from needles_tf.training import cluster
from needles_tf.training.options import PRECISIONS, STRATEGIES


def num_gpus() -> int:
    return len(tf.config.list_physical_devices("GPU"))


def make_strategy(name: str) -> tf.distribute.Strategy:
    """auto: MirroredStrategy over several local GPUs, else the default strategy.

    mirrored: over every local GPU, else over every logical CPU device (one unless configured
    with tf.config.set_logical_device_configuration, as the tests do to run two replicas).
    multi_worker reads the cluster from TF_CONFIG, else from the SLURM job step it runs in
    (training/cluster.py; one process per host or per GPU).
    """
    if name == "auto":
        name = "mirrored" if num_gpus() > 1 else "default"
    if name == "default":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        if num_gpus():
            return tf.distribute.MirroredStrategy()
        cpus = tf.config.list_logical_devices("CPU")
        return tf.distribute.MirroredStrategy([device.name for device in cpus])
    if name == "multi_worker":
        return tf.distribute.MultiWorkerMirroredStrategy(cluster_resolver=cluster.resolver())
    raise ValueError(f"strategy must be one of {', '.join(STRATEGIES)}; got {name!r}")


def resolve_precision(name: str) -> str:
    """auto: mixed_float16 on a GPU, float32 on CPU."""
    if name == "auto":
        return "mixed_float16" if num_gpus() else "float32"
    if name not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}; got {name!r}")
    return name


def set_precision(name: str) -> str:
    """Sets Keras' global dtype policy; returns the policy used."""
    policy = resolve_precision(name)
    keras.mixed_precision.set_global_policy(policy)
    return policy
