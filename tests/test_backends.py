"""The models are backend-agnostic Keras: the same weights give the same outputs under JAX."""

import json
import os
import subprocess
import sys

import numpy as np

from needles_tf.models import build_classifier, build_evidence_model

# Our own pooling layers (max and mean are Keras' own); one compiled JAX program each, ~3 s.
POOLINGS = ("logsumexp", "attention")

JAX_SIDE = """
import json, sys
import numpy as np
import keras
from needles_tf.models import build_classifier, build_evidence_model
assert keras.backend.backend() == "jax", keras.backend.backend()
# The weights are loaded below: skip JAX's random initialisers, which compile one XLA program
# per weight shape (26 s on 2 cores).
keras.initializers.VarianceScaling.__call__ = lambda self, shape, dtype=None: np.zeros(
    shape, dtype or "float32")
work = sys.argv[1]
images = np.load(f"{work}/images.npy")
for pooling in json.loads(sys.argv[2]):
    model = build_classifier(1, receptive_field=33, width_scale=1 / 16, pooling=pooling)
    model.load_weights(f"{work}/{pooling}.weights.h5")
    outputs = build_evidence_model(model).predict_on_batch(images)  # one compiled program
    np.save(f"{work}/{pooling}_logits.npy", outputs["logits"])
    np.save(f"{work}/{pooling}_evidence.npy", outputs["evidence_map"])
print("ok")
"""


def test_jax_backend_gives_the_tensorflow_outputs(tmp_path):
    images = np.random.default_rng(0).random((2, 48, 80, 1)).astype("float32")
    np.save(tmp_path / "images.npy", images)
    expected = {}
    for pooling in POOLINGS:
        model = build_classifier(1, receptive_field=33, width_scale=1 / 16, pooling=pooling)
        model.save_weights(str(tmp_path / f"{pooling}.weights.h5"))
        outputs = build_evidence_model(model)(images)
        expected[pooling] = (outputs["logits"].numpy(), outputs["evidence_map"].numpy())
    result = subprocess.run(
        [sys.executable, "-c", JAX_SIDE, str(tmp_path), json.dumps(POOLINGS)],
        capture_output=True, text=True, env={**os.environ, "KERAS_BACKEND": "jax"})
    assert result.returncode == 0, result.stderr[-3000:]
    for pooling in POOLINGS:
        logits, evidence = expected[pooling]
        # other convolution code (XLA's, not oneDNN's): float32 sums in another order
        np.testing.assert_allclose(np.load(tmp_path / f"{pooling}_logits.npy"), logits,
                                   rtol=5e-3, atol=5e-3)
        np.testing.assert_allclose(np.load(tmp_path / f"{pooling}_evidence.npy"), evidence,
                                   rtol=5e-3, atol=5e-3)
