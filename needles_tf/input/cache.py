"""A training split held once in memory and read by index, for shuffling without copies.

`Dataset.cache` gives no random access, so a full shuffle over it had to copy the whole split
every epoch (batch(buffer) + gather: +445 MiB peak for a 175 MiB cache), and a large
`from_tensor_slices` constant hits the 2 GB graph limit. Here the split (its uint8 images, or
its PNGs when the decoded split does not fit) sits in one non-trainable tf.Variable, filled by
scatter updates (a sliced assign reads the variable and copies it all), so the peak is the
split plus one fill batch (at most 256 MiB); an epoch gathers batches of positions in the order
of order.py.
"""

from __future__ import annotations

import ctypes
import ctypes.util

import numpy as np
import tensorflow as tf

FILL_BATCH = 256      # records assigned at once while filling,
FILL_BYTES = 1 << 28  # and at most 256 MiB of them (4 decoded images of 8192^2)


class IndexedCache:
    """The images (or PNGs) and labels of a split, by position (0 .. count - 1, record order).

    Args:
        records: a dataset of (position int64, uint8 image [H, W, C] or PNG scalar string,
            label int32), each position 0 .. count - 1 once, in any order (so the cache's
            order is that of the records, however they were read).
        count: how many records it yields.
        decode: what a gather returns for the values [N, ...]: images [N, H, W, C] uint8.
        record_bytes: about the bytes of one value (an image, a PNG), which bound the fill
            batches: 256 records of 8192^2 pixels would hold 16 GiB besides the cache.

    Raises:
        ValueError: `records` yields another number of elements than `count`.
    """

    def __init__(self, records: tf.data.Dataset, count: int, decode, record_bytes: int = 1):
        self._decode = decode
        spec = records.element_spec[1]
        with tf.device("/cpu:0"):  # a callable initial value: no second copy of the split
            self._values = tf.Variable(lambda: tf.zeros([count, *spec.shape], spec.dtype),
                                       trainable=False, name="split_cache")
        labels = np.full(count, -1, np.int32)
        fill_batch = max(1, min(FILL_BATCH, FILL_BYTES // max(record_bytes, 1)))
        for positions, values, batch_labels in records.batch(fill_batch):
            self._values.scatter_update(tf.IndexedSlices(values, positions))
            labels[positions.numpy()] = batch_labels.numpy()
        _release_freed_memory()
        if (labels < 0).any():
            raise ValueError(f"cache: {(labels < 0).sum()} of the {count} records never came")
        self.labels = labels
        self._labels = tf.constant(labels)

    @property
    def count(self) -> int:
        return len(self.labels)

    def gather(self, positions: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        """(images uint8 [N, H, W, C], labels int32 [N]) at int64 positions [N]."""
        return (self._decode(tf.gather(self._values, positions)),
                tf.gather(self._labels, positions))


def _release_freed_memory() -> None:
    """Hands the heap memory that filling freed back to the system (glibc's malloc_trim).

    The decode threads' freed buffers otherwise stay in glibc's per-thread arenas, which held
    0.3x the cache's size on top of it (measured, benches/bench_cache_memory.py). No-op where
    the C library has no malloc_trim.
    """
    libc = ctypes.util.find_library("c")
    trim = getattr(ctypes.CDLL(libc), "malloc_trim", None) if libc else None
    if trim is not None:
        trim(0)
