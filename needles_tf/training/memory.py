"""--micro_batch_size=auto: the largest micro-batch of a setting that fits the device's memory.

The memory of a training step is estimated, not tried: the model's activations per image
(models/remat.py's `kept_activations`), scaled by what TensorFlow's runtime was measured to
keep of them (benches/bench_memory.py, README), plus the weights, their gradients and the
optimizer's slots, plus the runtime itself. A share of the device is left free for what the
estimate misses. A tile-streamed step (--tile_size) holds one tile's activations per image at
a time: the estimate takes the tile's size, and the images themselves.
"""

from __future__ import annotations

import shutil
import subprocess

import keras

from needles_tf.models.remat import kept_activations

# Measured / estimated memory per image of a training step (benches/bench_memory.py, RF 33,
# canvas 128-512, capacity 1/4-2, TensorFlow on CPU, float32, the weights' gradients taken
# out): 0.61-0.67 without rematerialisation (the runtime frees outputs that the backward pass
# does not read), 0.58-0.85 with it; rounded up, as running out of memory costs more than a
# smaller micro-batch.
KEPT_SHARE = {"none": 0.7, "stage": 0.9, "block": 0.9}
OPTIMIZER_SLOTS = {"sgd": 0, "rmsprop": 1, "adam": 2}
RUNTIME_BYTES = 1 << 30  # the framework, kernels' workspace, the input pipeline
USABLE_SHARE = 0.85  # of the device's memory


def device_memory_bytes() -> int:
    """Memory of the device that trains: the first GPU's (nvidia-smi), else available RAM.

    Raises:
      ValueError: a GPU whose memory cannot be read.
    """
    import tensorflow as tf

    if tf.config.list_physical_devices("GPU"):
        smi = shutil.which("nvidia-smi")
        if smi:
            out = subprocess.run([smi, "--query-gpu=memory.total", "--format=csv,noheader,"
                                  "nounits", "--id=0"], capture_output=True, text=True,
                                 check=False).stdout.strip()
            if out.isdigit():
                return int(out) << 20
        raise ValueError("micro_batch_size=auto: cannot read the GPU's memory (nvidia-smi); "
                         "give --micro_batch_size as a number")
    with open("/proc/meminfo") as f:
        fields = dict(line.split(":", 1) for line in f)
    return int(fields["MemAvailable"].split()[0]) << 10


def step_bytes(model: keras.Model, height: int, width: int, remat: str, optimizer: str,
               accumulation: bool, bytes_per_value: int = 4) -> tuple[float, float]:
    """(fixed bytes, bytes per image) of one training step of `model` on height x width."""
    per_image = KEPT_SHARE[remat] * kept_activations(model, height, width, remat)
    copies = 2 + OPTIMIZER_SLOTS.get(optimizer, 2) + int(accumulation)  # weights, gradients
    fixed = RUNTIME_BYTES + copies * 4 * model.count_params()
    return fixed, per_image * bytes_per_value


def auto_micro_batch(model: keras.Model, height: int, width: int, batch_size: int, remat: str,
                     optimizer: str, bytes_per_value: int = 4,
                     budget_bytes: int | None = None, tile_size: int | None = None) -> int:
    """The largest divisor of `batch_size` whose step fits in the device's memory
    (streamed in tiles of `tile_size` pixels: a tile's memory per image).

    Raises:
      ValueError: not even one image fits; the message names the flags that would help.
    """
    budget = USABLE_SHARE * (device_memory_bytes() if budget_bytes is None else budget_bytes)
    if tile_size:  # a tile's activations, the images held whole as uint8 (the batch's input)
        budget -= batch_size * height * width * model.input_shape[-1]
        height, width = min(height, tile_size), min(width, tile_size)

    def fitting(mode: str) -> int:
        fixed, per_image = step_bytes(model, height, width, mode, optimizer,
                                      accumulation=True, bytes_per_value=bytes_per_value)
        return max((m for m in range(1, batch_size + 1)
                    if batch_size % m == 0 and fixed + m * per_image <= budget), default=0)

    micro = fitting(remat)
    if micro:
        return micro
    fixed, per_image = step_bytes(model, height, width, remat, optimizer, True, bytes_per_value)
    hints = ["--remat=block"] if remat != "block" and not tile_size and fitting("block") else []
    hints += ["a smaller --width_scale", "smaller images (crops)"]
    hints += ["a smaller --tile_size"] if tile_size else ["--tile_size (tile streaming)"]
    raise ValueError(
        f"micro_batch_size=auto: one {height} x {width} {'tile' if tile_size else 'image'} "
        "needs about "
        f"{(fixed + per_image) / 2**30:.1f} GiB in a training step of this setting, more than "
        f"the {budget / 2**30:.1f} GiB usable here; try {', or '.join(hints)}")
