"""The training loop: one optimizer step per global batch, on any tf.distribute strategy.

Keras' `fit` is not used. Under MultiWorkerMirroredStrategy it cannot start (it reduces a sample
batch across workers and fails: keras-team/keras#20585, then again in its per-replica loss
reduction), and its gradient accumulation fails under more than one replica. Here each replica
splits its share of the global batch into micro-batches, sums their gradients (one traced
forward and backward pass inside a while loop), and the optimizer all-reduces the sums across
replicas and workers, so the update is the one of the whole global batch on one device. The
callbacks (ours, Keras' TensorBoard and progress bar) are driven as `fit` drives them.
"""

from __future__ import annotations

from typing import Sequence

import keras
import tensorflow as tf

from needles_tf.models.streaming import StreamedClassifier
from needles_tf.training.streamed import streamed_gradients

SUM = tf.distribute.ReduceOp.SUM
_PER_IMAGE_LOSS = keras.losses.SparseCategoricalCrossentropy(from_logits=True, reduction=None)


class TrainLoop:
    """Trains `model` with `optimizer` (built, for its variables) under `strategy`.

    Args:
      model: what is trained (the classifier, or its rematerialised twin).
      optimizer: a Keras optimizer created under the strategy's scope (with mixed precision, a
        LossScaleOptimizer).
      strategy: the distribution strategy the model was built under.
      micro_batch: images per forward pass on one replica.
      accumulation: micro-batches per replica and global batch; above 1, each replica's share
        of a global batch is cut into micro-batches of `micro_batch` images.
      jit_compile: compile each replica's step with XLA.
      streamed: run each image tile by tile (training/streamed.py): the same gradients with
        the memory of a tile; `model` is then the classifier itself.
    """

    def __init__(self, model: keras.Model, optimizer: keras.optimizers.Optimizer,
                 strategy: tf.distribute.Strategy, micro_batch: int, accumulation: int = 1,
                 jit_compile: bool = False, streamed: StreamedClassifier | None = None):
        self.model = model
        self.streamed = streamed
        self.optimizer = optimizer
        self.strategy = strategy
        self.micro_batch = micro_batch
        self.accumulation = accumulation
        # a function of its own only for XLA: nested needlessly, it added 3 s to the start of
        # a paper-sized model (41 -> 44 s for the crash canary's run)
        self.replica_step = (tf.function(self._replica_step, jit_compile=True) if jit_compile
                             else self._replica_step)
        self.step = tf.function(self._step)

    def _step(self, iterator) -> tf.Tensor:
        """One global batch: [loss sum, correct predictions, images] over every replica."""
        images, labels = next(iterator)
        # the global batch's size: the shares differ in an epoch's last, partial batch
        counts = self.strategy.run(lambda y: tf.cast(tf.shape(y)[0], tf.float32), args=(labels,))
        global_count = self.strategy.reduce(SUM, counts, axis=None)
        per_replica = self.strategy.run(self.replica_step, args=(images, labels, global_count))
        return self.strategy.reduce(SUM, per_replica, axis=None)

    def _replica_step(self, images: tf.Tensor, labels: tf.Tensor,
                      global_count: tf.Tensor) -> tf.Tensor:
        count = tf.shape(labels)[0]
        global_count = tf.maximum(global_count, 1.0)
        variables = self.model.trainable_variables

        def micro_step(x, y):
            def scaled_loss(logits):
                loss_sum = tf.reduce_sum(_PER_IMAGE_LOSS(y, tf.cast(logits, tf.float32)))
                return self.optimizer.scale_loss(loss_sum / global_count), loss_sum

            if self.streamed is not None:
                grads, logits = streamed_gradients(
                    self.streamed, x, lambda logits: scaled_loss(logits)[0], variables)
                loss_sum = scaled_loss(tf.stop_gradient(logits))[1]
            else:
                with tf.GradientTape() as tape:
                    logits = self.model(x, training=True)
                    scaled, loss_sum = scaled_loss(logits)
                grads = tape.gradient(scaled, variables)
            correct = tf.reduce_sum(tf.cast(
                tf.equal(tf.argmax(logits, axis=-1, output_type=y.dtype), y), tf.float32))
            return grads, loss_sum, correct

        if self.accumulation == 1:
            grads, loss_sum, correct = micro_step(images, labels)
        else:
            grads, loss_sum, correct = self._accumulate(micro_step, images, labels, variables)
        self.optimizer.apply(grads, variables)
        return tf.stack([loss_sum, correct, tf.cast(count, tf.float32)])

    def _accumulate(self, micro_step, images, labels, variables: Sequence):
        """Sums micro_step's gradients and statistics over the micro-batches of a share."""
        size = self.micro_batch
        steps = (tf.shape(labels)[0] + size - 1) // size

        def body(i, grads, loss_sum, correct):
            g, loss, right = micro_step(images[i * size:(i + 1) * size],
                                        labels[i * size:(i + 1) * size])
            return i + 1, [a + b for a, b in zip(grads, g)], loss_sum + loss, correct + right

        zeros = [tf.zeros(v.shape, v.dtype) for v in variables]
        _, grads, loss_sum, correct = tf.while_loop(
            lambda i, *_: i < steps, body, (tf.constant(0), zeros, 0.0, 0.0))
        return grads, loss_sum, correct

    def fit(self, dataset, epochs: int, initial_epoch: int, steps_per_epoch: int,
            callbacks: Sequence[keras.callbacks.Callback], verbose: int | str) -> None:
        """Trains epochs initial_epoch .. epochs - 1 from `dataset` (a distributed dataset of
        those epochs back to back, steps_per_epoch global batches each)."""
        callback_list = keras.callbacks.CallbackList(
            list(callbacks), add_progbar=verbose != 0, verbose=verbose, epochs=epochs,
            steps=steps_per_epoch, model=self.model)
        self.model.stop_training = False
        iterator = iter(dataset)
        callback_list.on_train_begin()
        logs: dict = {}
        for epoch in range(initial_epoch, epochs):
            callback_list.on_epoch_begin(epoch)
            totals = tf.zeros([3])
            for step in range(steps_per_epoch):
                callback_list.on_train_batch_begin(step)
                totals += self.step(iterator)
                loss, correct, count = (float(t) for t in totals)
                logs = {"loss": loss / max(count, 1.0), "accuracy": correct / max(count, 1.0)}
                callback_list.on_train_batch_end(step, logs)
                if self.model.stop_training:
                    break
            callback_list.on_epoch_end(epoch, logs)
            if self.model.stop_training:
                break
        callback_list.on_train_end(logs)
