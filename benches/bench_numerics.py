"""Float32 gradients of the classifier against float64, per instance-norm formulation.

    python benches/bench_numerics.py

For RF 9 and 33 at 64 x 64 and RF 177 at 200 x 200, every pooling, random weights, a batch of 4
uniform images: the relative Frobenius distance of all float32 gradients from float64 ones with
the same weights, for our layer, a textbook two-pass layer and the one-pass E[x^2] - E[x]^2 of
the first version. Ours must stay within 1.5x of the textbook's (tests/test_numerics.py checks
a subset).
"""

import os
import sys

import needles_tf  # noqa: F401  (first: sets the CPU's oneDNN default before TensorFlow starts)

# isort: split
from keras import ops

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))
from test_numerics import TextbookInstanceNorm, gradient_distances  # noqa: E402

from needles_tf.models import InstanceNormalization  # noqa: E402


class OnePassInstanceNorm(InstanceNormalization):
    """The first version: variance as E[x^2] - E[x]^2."""

    def call(self, x):
        mean = ops.mean(x, axis=(1, 2), keepdims=True)
        variance = ops.maximum(ops.mean(ops.square(x), axis=(1, 2), keepdims=True)
                               - ops.square(mean), 0.0)
        scale = ops.rsqrt(variance + self.epsilon) * self.gamma
        return x * scale + (self.beta - mean * scale)


def main() -> None:
    norms = {"ours": InstanceNormalization, "textbook": TextbookInstanceNorm,
             "one-pass": OnePassInstanceNorm}
    print(f"{'rf':>3} {'size':>4} {'pooling':>9} " + " ".join(f"{n:>9}" for n in norms)
          + "  ours/textbook")
    for rf, size in ((9, 64), (33, 64), (177, 200)):
        for pooling in ("max", "mean", "logsumexp", "attention"):
            d = gradient_distances(rf, size, pooling, norms)
            print(f"{rf:>3} {size:>4} {pooling:>9} " + " ".join(f"{d[n]:9.2e}" for n in norms)
                  + f"  {d['ours'] / d['textbook']:6.2f}", flush=True)


if __name__ == "__main__":
    main()
