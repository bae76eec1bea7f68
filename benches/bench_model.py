"""Training-step throughput and peak memory of the BagNet classifier over a grid of settings.

Backend-agnostic: runs under TensorFlow on CPU (default) and, with KERAS_BACKEND=jax, on a GPU.

    python benches/bench_model.py                                   # the 2-core CPU reference
    python benches/bench_model.py --canvas 64,128 --rf 9,33,177 --scale 0.25,1
    KERAS_BACKEND=jax python benches/bench_model.py --precision mixed_float16 --peak_tflops 989
    python benches/bench_model.py --canvas 1024 --scale 2 --batch 4 --remat block   # a GPU

Prints one line per setting: images/s of train_on_batch after warm-up, the process's peak
resident memory (CPU) or the device's peak memory (JAX or TensorFlow GPU), and with
--peak_tflops the model FLOP utilisation (analytic conv/dense FLOPs x 3 for forward + backward).
"""

import argparse
import resource
import time

import needles_tf  # noqa: F401  (first: sets the CPU's oneDNN default before TensorFlow starts)

# isort: split
import keras
import numpy as np

from needles_tf.models import RF_PRESETS, build_classifier
from needles_tf.models.bagnet import STAGE_BLOCKS
from needles_tf.models.remat import rematerialised


def conv_flops(model: keras.Model, height: int, width: int, channels: int) -> float:
    """Forward multiply-adds x 2 of every convolution and dense layer for one image."""
    flops = 0.0
    # Trace spatial sizes with a symbolic call so any canvas works.
    shapes = {}
    for layer in model.layers:
        if isinstance(layer, (keras.layers.Conv2D, keras.layers.Dense)):
            shapes[layer.name] = layer
    probe = keras.Model(model.input, [model.get_layer(n).output for n in shapes])
    outputs = probe.compute_output_shape((1, height, width, channels))
    for layer, shape in zip(shapes.values(), outputs):
        kernel = layer.kernel.shape
        fan_in = int(np.prod(kernel[:-1]))
        locations = int(np.prod(shape[1:-1])) if len(shape) > 2 else 1
        flops += 2.0 * fan_in * kernel[-1] * locations
    return flops


def peak_memory_mib() -> float:
    """The accelerator's own peak counter (JAX or TensorFlow GPU), else peak resident memory."""
    if keras.backend.backend() == "jax":
        import jax

        stats = jax.devices()[0].memory_stats() or {}
        if "peak_bytes_in_use" in stats:
            return stats["peak_bytes_in_use"] / 2**20
    elif keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        if tf.config.list_logical_devices("GPU"):
            return tf.config.experimental.get_memory_info("GPU:0")["peak"] / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def bench(canvas: int, rf: int, scale: float, batch: int, steps: int, pooling: str,
          jit: bool, peak_tflops: float | None, normalization: bool = True,
          blocks: tuple[int, ...] = STAGE_BLOCKS, remat: str = "none") -> str:
    classifier = build_classifier(1, receptive_field=rf, width_scale=scale, pooling=pooling,
                                  normalization=normalization, blocks=blocks)
    model = rematerialised(classifier, remat)
    model.compile(
        optimizer=keras.optimizers.RMSprop(5e-5, rho=0.99, epsilon=1e-5),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        jit_compile=jit,
    )
    rng = np.random.default_rng(0)
    x = rng.random((batch, canvas, canvas, 1), dtype=np.float32)
    y = rng.integers(0, 2, batch)
    for _ in range(3):
        model.train_on_batch(x, y)
    start = time.perf_counter()
    for _ in range(steps):
        loss = model.train_on_batch(x, y)
    float(np.asarray(loss if np.ndim(loss) == 0 else loss[0]))  # wait for the device
    elapsed = time.perf_counter() - start
    rate = batch * steps / elapsed
    line = (f"canvas {canvas:5d}  rf {rf:3d}  s {scale:<5g} blocks {''.join(map(str, blocks))}"
            f"  remat {remat:5s}  batch {batch:3d}  "
            f"{rate:8.3g} images/s  peak {peak_memory_mib():8.0f} MiB")
    if peak_tflops:
        achieved = 3 * conv_flops(classifier, canvas, canvas, 1) * rate / 1e12
        line += f"  {achieved:7.2f} TFLOP/s  MFU {100 * achieved / peak_tflops:5.1f} %"
    return line


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--canvas", default="64", help="comma-separated input sizes")
    parser.add_argument("--rf", default="33",
                        help=f"comma-separated presets of {sorted(RF_PRESETS)}")
    parser.add_argument("--scale", default="0.25", help="comma-separated capacity scales")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--pooling", default="max")
    parser.add_argument("--precision", default="float32",
                        help="float32 | mixed_float16 | mixed_bfloat16")
    parser.add_argument("--jit", action="store_true", help="compile the train step with XLA")
    parser.add_argument("--no_norm", action="store_true", help="no instance normalisation")
    parser.add_argument("--blocks", default="3,4,6,3", help="bottleneck blocks per stage")
    parser.add_argument("--remat", default="none", help="none | stage | block")
    parser.add_argument("--peak_tflops", type=float, help="device peak, for model FLOP utilisation")
    args = parser.parse_args()

    keras.mixed_precision.set_global_policy(args.precision)
    print(f"backend {keras.backend.backend()}  precision {args.precision}  jit {args.jit}")
    for canvas in map(int, args.canvas.split(",")):
        for rf in map(int, args.rf.split(",")):
            for scale in map(float, args.scale.split(",")):
                print(bench(canvas, rf, scale, args.batch, args.steps, args.pooling, args.jit,
                            args.peak_tflops, not args.no_norm,
                            tuple(int(b) for b in args.blocks.split(",")), args.remat),
                      flush=True)


if __name__ == "__main__":
    main()
