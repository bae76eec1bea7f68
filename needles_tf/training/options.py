"""The choices of the training options, kept free of TensorFlow so that a binary can list them
in its flags (and answer --help) without starting TensorFlow."""

STRATEGIES = ("auto", "default", "mirrored", "multi_worker")
PRECISIONS = ("auto", "float32", "mixed_float16", "mixed_bfloat16")
OPTIMIZERS = ("rmsprop", "adam", "sgd")
REMAT = ("none", "stage", "block")  # models/remat.py's REMAT_MODES
