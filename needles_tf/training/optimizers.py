"""Optimizers of the protocol; RMSprop with the hyper-parameters of the paper's code."""

from __future__ import annotations

import keras

from needles_tf.training.options import OPTIMIZERS


def make_optimizer(name: str, learning_rate: float,
                   accumulation_steps: int = 1) -> keras.optimizers.Optimizer:
    """rmsprop (rho 0.99, eps 1e-5 as the paper's code), adam, or sgd (momentum 0.9).

    accumulation_steps > 1 averages the gradients of that many micro-batches per update
    (Keras' `gradient_accumulation_steps`), so a small micro-batch gives the effective batch.
    """
    accumulate = ({"gradient_accumulation_steps": accumulation_steps}
                  if accumulation_steps > 1 else {})
    if name == "rmsprop":
        return keras.optimizers.RMSprop(learning_rate, rho=0.99, epsilon=1e-5, **accumulate)
    if name == "adam":
        return keras.optimizers.Adam(learning_rate, **accumulate)
    if name == "sgd":
        return keras.optimizers.SGD(learning_rate, momentum=0.9, **accumulate)
    raise ValueError(f"optimizer must be one of {', '.join(OPTIMIZERS)}; got {name!r}")
