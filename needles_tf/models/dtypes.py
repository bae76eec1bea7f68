"""Which dtype the numerically sensitive parts of the classifier compute in."""

import keras

HALF = ("float16", "bfloat16")


def wide_dtype(dtype: str | None = None) -> str:
    """float32 for half precision (mixed-precision policies), else the dtype itself.

    Args:
        dtype: a compute dtype; None: the global policy's.

    Returns:
        The dtype for reductions, statistics and logits: never below float32, and float64
        when the model computes in float64 (the reference of the numerics tests).
    """
    dtype = keras.backend.standardize_dtype(dtype or keras.config.dtype_policy().compute_dtype)
    return "float32" if dtype in HALF else dtype
