"""Several worker processes training one run: where the cluster comes from, who writes, and how
the workers agree on where to start.

The cluster is read from TF_CONFIG (a worker started by hand or by a launcher) or, without it,
from SLURM's variables inside a job step (`srun`). Only the chief (the "chief" task, else worker
0) writes the run directory; every worker reads the chief's checkpoint from it, so the model
directory must be on a file system that all workers see.
"""

from __future__ import annotations

import json
import os

import tensorflow as tf

SLURM_PORT_BASE = 8888  # worker k of a node listens on 8888 + k
FINISHED, FAILED = -1, -2  # what the chief tells the workers instead of a starting epoch
# what a collective operation raises when a worker of the cluster stops or cannot be reached
LOST_WORKER = (tf.errors.UnavailableError, tf.errors.AbortedError,
               tf.errors.DeadlineExceededError, tf.errors.CancelledError)


def resolver() -> tf.distribute.cluster_resolver.ClusterResolver:
    """The cluster of this process: TF_CONFIG, else the SLURM job step it runs in.

    Raises:
      ValueError: no cluster description, or TF_CONFIG is not JSON.
    """
    if "TF_CONFIG" in os.environ:
        try:
            json.loads(os.environ["TF_CONFIG"])
        except json.JSONDecodeError as e:
            raise ValueError(f"TF_CONFIG is not valid JSON: {e}") from None
        return tf.distribute.cluster_resolver.TFConfigClusterResolver()
    if "SLURM_PROCID" in os.environ and "SLURM_STEP_NODELIST" in os.environ:
        # SLURM sets SLURM_GPUS_ON_NODE where GPUs are allocated; the resolver then gives each
        # task its share of them through CUDA_VISIBLE_DEVICES (TensorFlow has not started yet).
        # It lists a task per GPU slot only, so nodes without GPUs get nominal slots, unset.
        gpus = int(os.environ.get("SLURM_GPUS_ON_NODE") or 0)
        return tf.distribute.cluster_resolver.SlurmClusterResolver(
            port_base=SLURM_PORT_BASE, gpus_per_node=gpus or 1024,
            gpus_per_task=None if gpus else 1, auto_set_gpu=gpus > 0)
    raise ValueError("strategy=multi_worker needs the cluster: set TF_CONFIG (see the README, "
                     "'GPUs and clusters') or start the workers with srun inside a SLURM job")


def num_workers(strategy: tf.distribute.Strategy) -> int:
    """Worker processes that train together (1 without a cluster)."""
    cluster = getattr(strategy, "cluster_resolver", None)
    if cluster is None:
        return 1
    jobs = cluster.cluster_spec().as_dict()
    return sum(len(tasks) for name, tasks in jobs.items() if name in ("chief", "worker")) or 1


def is_chief(strategy: tf.distribute.Strategy) -> bool:
    """Whether this process writes the run: the "chief" task, else worker 0, else the only one."""
    cluster = getattr(strategy, "cluster_resolver", None)
    if cluster is None or num_workers(strategy) == 1:
        return True
    if "chief" in cluster.cluster_spec().as_dict():
        return cluster.task_type == "chief"
    return cluster.task_type == "worker" and cluster.task_id == 0


def from_chief(strategy: tf.distribute.Strategy, value: int) -> int:
    """The chief's `value` on every worker (an all-reduce to which only replica 0 of the chief
    adds; the other workers' `value` is ignored). Every worker must call it at the same point."""
    if num_workers(strategy) == 1:
        return value

    def contribution():
        first = tf.distribute.get_replica_context().replica_id_in_sync_group == 0
        return tf.where(first, tf.constant(value, tf.int64), tf.constant(0, tf.int64))

    @tf.function  # collectives run eagerly are slow, and TensorFlow warns about it
    def broadcast():
        return strategy.reduce(tf.distribute.ReduceOp.SUM, strategy.run(contribution), axis=None)

    return int(broadcast())
