"""Which records a training epoch visits, and in what order: a function of record indices only.

Selection. `select_indices` takes, per class, the first round(b * N) positives and the first
N - round(b * N) negatives of a permutation fixed by the seed, so a smaller training set is a
subset of a larger one for the same seed.

Order. An epoch's order is a permutation of the selected positions keyed by an int64 epoch seed
(from (seed, epoch), so a run resumed at epoch k sees exactly what an uninterrupted run would).
With oversampling, each position of the epoch draws its class by a coin keyed by (epoch seed,
position); each class is a stream of its positions, reshuffled at every pass. Everything is
computed on indices, never on images, so it costs no memory and does not depend on files or on
the number of workers that later split the order.
"""

from __future__ import annotations

import math

import numpy as np
import tensorflow as tf

_SEED_MIX = 1_000_003  # epoch seed = seed * _SEED_MIX + epoch


def selection_counts(positives: int, negatives: int, size: int | None,
                     balance: float | None) -> tuple[int, int]:
    """(positives, negatives) a selection takes from a split with these class counts.

    Args:
        positives, negatives: the split's class counts.
        size: images to select; None: the largest selection with the balance (all images when
            the split has that balance or no balance is asked for).
        balance: positive fraction (None: the split's own).

    Raises:
        ValueError: size out of range, a class left empty, or too few images of a class.
    """
    total = positives + negatives
    fraction = positives / max(total, 1) if balance is None else balance
    if size is None and balance is not None and total:
        size = min(total, int(min(positives / balance, negatives / (1 - balance)) + 1e-9))
        while size > 1 and size - round(balance * size) > negatives:  # rounding's last image
            size -= 1
    size = total if size is None else size
    if not 0 < size <= total:
        raise ValueError(f"train_size must be in [1, {total}] (the split's size), got {size}")
    num_pos = int(round(fraction * size))
    num_neg = size - num_pos
    if balance is not None and min(num_pos, num_neg) == 0:
        # nothing of one class to oversample: the balanced order could never be drawn
        raise ValueError(
            f"train_size={size} with class_balance={balance:g} selects {num_pos} positives and "
            f"{num_neg} negatives; both classes need at least one image: raise train_size to "
            f"{math.ceil(0.5 / min(balance, 1 - balance))} or more, or move class_balance "
            "towards 0.5")
    if num_pos > positives or num_neg > negatives:
        raise ValueError(
            f"train_size={size} with class_balance={fraction:g} needs {num_pos} positives and "
            f"{num_neg} negatives, the split has {positives} and {negatives}; lower "
            "--train_size, or leave it unset for the largest selection with that balance")
    return num_pos, num_neg


def select_indices(labels: np.ndarray, size: int | None, balance: float | None,
                   seed: int) -> np.ndarray:
    """Nested, seed-fixed selection of `size` record indices with a positive fraction `balance`.

    Args:
        labels: every record's label, in record order.
        size: records to select (None: the largest selection, see `selection_counts`).
        balance: positive fraction (None: the split's own).
        seed: selection seed.

    Returns:
        The selected record indices, sorted.

    Raises:
        ValueError: see `selection_counts`.
    """
    pos, neg = np.flatnonzero(labels == 1), np.flatnonzero(labels != 1)
    num_pos, num_neg = selection_counts(len(pos), len(neg), size, balance)
    rng = np.random.default_rng([seed, 0x5E1EC7])
    return np.sort(np.concatenate([rng.permutation(pos)[:num_pos],
                                   rng.permutation(neg)[:num_neg]]))


def epoch_seed(seed: int, epoch):
    """The int64 seed of one epoch's order."""
    return tf.cast(epoch, tf.int64) + seed * _SEED_MIX


def epoch_seeds(seed: int, epochs: tuple[int, int] | None) -> tuple[tf.data.Dataset, int]:
    """The int64 seed of each epoch a training dataset holds, and how many there are: epochs
    first .. last - 1, each keyed by (seed, epoch); None: one pass that draws a new seed from
    `seed` every time it is iterated."""
    if epochs is None:
        return tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True).take(1), 1
    first, last = epochs
    return (tf.data.Dataset.range(first, last).map(lambda e: epoch_seed(seed, e)),
            max(last - first, 0))


def replica_shares(positions: tf.Tensor, batch_size: int, drop_remainder: bool,
                   replicas: range, share: int) -> tf.data.Dataset:
    """An epoch's positions in global batches of `batch_size`; under several replicas
    (share < batch_size) each element is one replica's share of a batch (positions share * g ..
    share * (g + 1) - 1 for replica g; in a last, partial batch some shares are smaller or
    empty), the shares of `replicas` (this input pipeline's) in turn."""
    ds = tf.data.Dataset.from_tensor_slices(positions).batch(batch_size,
                                                              drop_remainder=drop_remainder)
    if share < batch_size:
        ds = ds.flat_map(lambda b: tf.data.Dataset.from_tensor_slices(
            tf.constant(list(replicas), tf.int64)).map(lambda g: b[g * share:(g + 1) * share]))
    return ds


def permutation(count, seed, chunk=0):
    """A permutation of range(count) keyed by an int64 seed pair [2] (and a chunk index)."""
    key = tf.stack([seed[0] * _SEED_MIX + seed[1], tf.cast(chunk, tf.int64)])
    return tf.random.experimental.stateless_shuffle(tf.range(count, dtype=tf.int64), seed=key)


def shuffled_order(count: int, seed) -> tf.Tensor:
    """One epoch over `count` positions, each once, in an order keyed by the epoch seed."""
    return permutation(count, tf.stack([seed, tf.constant(-1, tf.int64)]))


def _class_stream(members: np.ndarray, count, seed, label: int) -> tf.Tensor:
    """The first `count` elements of a class's positions, reshuffled at every pass (pass r
    keyed by (seed, 2r + label))."""
    passes = tf.maximum((count + len(members) - 1) // len(members), 1)
    members_t = tf.constant(members, tf.int64)
    stream = tf.map_fn(
        lambda r: tf.gather(members_t, permutation(len(members), tf.stack([seed, 2 * r + label]))),
        tf.range(passes), fn_output_signature=tf.TensorSpec([len(members)], tf.int64))
    return tf.reshape(stream, [-1])


def oversampled_order(labels: np.ndarray, seed) -> tf.Tensor:
    """One epoch of len(labels) positions, each drawing its class with probability 1/2.

    Position i takes the next element of the positive or the negative stream (_class_stream)
    by coin i (keyed by the epoch seed). The minority class is oversampled, an epoch keeps its
    size.
    """
    coins = tf.random.stateless_uniform([len(labels)], seed=tf.stack([seed, -1])) < 0.5
    taken = []
    for label, drawn in ((0, ~coins), (1, coins)):
        members = np.flatnonzero(labels == label)
        if not len(members):
            raise ValueError(f"oversampling needs both classes; the selection has no {label}s")
        stream = _class_stream(members, tf.reduce_sum(tf.cast(drawn, tf.int64)), seed, label)
        rank = tf.cumsum(tf.cast(drawn, tf.int64)) - 1  # position within the class stream
        taken.append(tf.gather(stream, tf.where(drawn, rank, 0)))
    return tf.where(coins, taken[1], taken[0])


def stateless_shuffle(ds: tf.data.Dataset, buffer_size: int, seed) -> tf.data.Dataset:
    """Shuffles a stream in consecutive chunks of buffer_size elements, each chunk's permutation
    a function of (seed [2], chunk index) alone: the order of an uncached training split, which
    has no random access."""
    def permute(index, chunk):
        order = permutation(tf.shape(tf.nest.flatten(chunk)[0])[0], seed, index)
        return tf.data.Dataset.from_tensor_slices(
            tf.nest.map_structure(lambda t: tf.gather(t, order), chunk))

    return ds.batch(buffer_size).enumerate().flat_map(permute)
