"""BagNet encoder, global pooling layers and classifier assembly (backend-agnostic Keras 3).

Only `keras.layers` and `keras.ops` are used here, never TensorFlow directly, so the same network
runs under the TensorFlow, JAX and PyTorch backends.
"""

from needles_tf.models.bagnet import RF_PRESETS, bagnet_encoder, min_input_size, receptive_field
from needles_tf.models.classifier import (
                                         build_classifier,
                                         build_evidence_model,
                                         check_binary,
                                         classifier_k3,
                                         min_image_size,
                                         needle_probability,
)
from needles_tf.models.normalization import InstanceNormalization
from needles_tf.models.pooling import POOLINGS, AttentionPooling, LogSumExpPooling

__all__ = [
    "RF_PRESETS", "POOLINGS", "AttentionPooling", "InstanceNormalization", "LogSumExpPooling",
    "bagnet_encoder", "build_classifier", "build_evidence_model", "check_binary", "classifier_k3",
    "min_image_size", "min_input_size", "needle_probability", "receptive_field",
]
