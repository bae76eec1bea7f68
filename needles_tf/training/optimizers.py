"""Optimizers of the protocol; RMSprop with the hyper-parameters of the paper's code."""

from __future__ import annotations

import keras

from needles_tf.training.options import OPTIMIZERS


def make_optimizer(name: str, learning_rate: float) -> keras.optimizers.Optimizer:
    """rmsprop (rho 0.99, eps 1e-5 as the paper's code), adam, or sgd (momentum 0.9).

    Gradient accumulation is the training loop's (training/loop.py), not the optimizer's:
    Keras' `gradient_accumulation_steps` fails under more than one replica.
    """
    if name == "rmsprop":
        return keras.optimizers.RMSprop(learning_rate, rho=0.99, epsilon=1e-5)
    if name == "adam":
        return keras.optimizers.Adam(learning_rate)
    if name == "sgd":
        return keras.optimizers.SGD(learning_rate, momentum=0.9)
    raise ValueError(f"optimizer must be one of {', '.join(OPTIMIZERS)}; got {name!r}")
