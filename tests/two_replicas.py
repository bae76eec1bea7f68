"""Run as a script: one training under MirroredStrategy over two logical CPU devices (which must
be configured before TensorFlow starts, hence a process of its own); prints the summary as JSON.

    python tests/two_replicas.py '{"data_dir": ..., "model_dir": ..., ...TrainConfig fields}'
"""

import json
import sys

import needles_tf  # noqa: F401  (first: the CPU's oneDNN default)

# isort: split
import tensorflow as tf

from needles_tf.training.trainer import TrainConfig, train

cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
print(json.dumps(train(TrainConfig(**{**json.loads(sys.argv[1]), "strategy": "mirrored"}),
                       verbose=0)))
