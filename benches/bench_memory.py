"""Peak memory of one training step per image, with and without rematerialisation.

    python benches/bench_memory.py                    # canvas 128,256,512 x capacity 1/4,1,2
    python benches/bench_memory.py --canvas 512 --scale 1 --remat none,block
    python benches/bench_memory.py --canvas 1024 --scale 2 --batch 1
    KERAS_BACKEND=jax python benches/bench_memory.py ...   # on a GPU: the device's own counter

Each setting runs in a process of its own (a process's peak resident memory covers its whole
life): the model is built with its optimizer's slots, the memory then in use is the fixed part
(runtime, weights, slots), and the step's peak above it, divided by the batch, is the memory
per image (activations, their gradients, the weights' gradients shared out). One line per
setting: fixed and per-image MiB, seconds per image, and the largest micro-batch of an
effective batch of 32 that fits in --predict_gb of device memory, at this canvas and, from
the pixels, at --to_canvas. A GPU run with KERAS_BACKEND=jax reads the device's counters (cap
it to a smaller device with XLA_PYTHON_CLIENT_MEM_FRACTION, e.g. 0.57 of a 141 GB H200 for 80).
"""

import argparse
import json
import os
import subprocess
import sys
import time

STEPS = 1  # timed steps after one warm-up step


def child(canvas: int, scale: float, remat: str, batch: int, rf: int) -> dict:
    """One training step's memory (MiB) and seconds, in this process (the seconds are right
    only without measure()'s allocator setting)."""
    import needles_tf  # noqa: F401  (first: sets the CPU's oneDNN default before TensorFlow)

    # isort: split
    import keras
    import numpy as np

    from needles_tf.models import build_classifier
    from needles_tf.models.remat import rematerialised

    on_jax = keras.backend.backend() == "jax"
    model = build_classifier(1, receptive_field=rf, width_scale=scale)
    trained = rematerialised(model, remat)
    trained.compile(optimizer=keras.optimizers.RMSprop(5e-5),
                    loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    trained.optimizer.build(trained.trainable_variables)
    images = np.random.default_rng(0).random((batch, canvas, canvas, 1)).astype("float32")
    labels = np.arange(batch) % 2
    if on_jax:  # the device's counters: compiling takes no device memory
        fixed = jax_memory("bytes_in_use")
        trained.train_on_batch(images, labels)
    else:  # after the first step, which traces (host memory), then the peak of the next
        trained.train_on_batch(images, labels)
        fixed = proc_status_mib("VmRSS")
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM, the peak resident set, to the current one
    start = time.perf_counter()
    for _ in range(STEPS):
        trained.train_on_batch(images, labels)
    step_s = (time.perf_counter() - start) / STEPS
    peak = jax_memory("peak_bytes_in_use") if on_jax else proc_status_mib("VmHWM")
    return {"fixed_mib": fixed, "peak_mib": peak, "step_s": step_s}


def jax_memory(key: str) -> float:
    import jax

    return (jax.devices()[0].memory_stats() or {}).get(key, 0) / 2**20


def proc_status_mib(field: str) -> float:
    with open("/proc/self/status") as f:
        line = next(line for line in f if line.startswith(field + ":"))
    return int(line.split()[1]) / 1024


def measure(canvas: int, scale: float, remat: str, batch: int, rf: int) -> dict:
    """Memory from one process, seconds per step from another: the allocator setting that
    makes the resident set follow the memory in use (glibc returns freed blocks of 64 KiB and
    up at once) slows the step down."""
    args = [sys.executable, __file__, "--child", f"{canvas},{scale},{remat},{batch},{rf}"]
    results = []
    for extra in ({"MALLOC_MMAP_THRESHOLD_": "65536"}, {}):
        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", **extra}
        result = subprocess.run(args, capture_output=True, text=True, check=False, env=env)
        if result.returncode != 0:
            tail = result.stderr.strip().splitlines()[-1:] or ["?"]
            return {"error": f"exit {result.returncode}: {tail[0][:120]}"}
        results.append(json.loads(result.stdout.strip().splitlines()[-1]))
    return {**results[0], "step_s": results[1]["step_s"]}


def largest_micro_batch(fixed_mib: float, per_image_mib: float, device_gb: float,
                        batch: int = 32) -> int:
    """The largest divisor of `batch` whose step fits in `device_gb` (0: not even one image)."""
    room = device_gb * 1024 - fixed_mib
    fits = [m for m in range(1, batch + 1) if batch % m == 0 and m * per_image_mib <= room]
    return max(fits, default=0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--canvas", default="128,256,512")
    parser.add_argument("--scale", default="0.25,1,2")
    parser.add_argument("--remat", default="none,block")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--rf", type=int, default=33)
    parser.add_argument("--predict_gb", type=float, default=80.0)
    parser.add_argument("--to_canvas", type=int, default=1024)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        canvas, scale, remat, batch, rf = args.child.split(",")
        print(json.dumps(child(int(canvas), float(scale), remat, int(batch), int(rf))))
        return
    print(f"RF {args.rf}, a training step (RMSprop) at batch {args.batch}; micro-batch of an "
          f"effective batch of 32 predicted to fit in {args.predict_gb:g} GB", flush=True)
    for canvas in map(int, args.canvas.split(",")):
        for scale in map(float, args.scale.split(",")):
            for remat in args.remat.split(","):
                got = measure(canvas, scale, remat, args.batch, args.rf)
                if "error" in got:
                    print(f"canvas {canvas} s {scale:g} remat {remat}: {got['error']}",
                          flush=True)
                    continue
                per_image = (got["peak_mib"] - got["fixed_mib"]) / args.batch
                grown = per_image * (args.to_canvas / canvas) ** 2
                fits = [largest_micro_batch(got["fixed_mib"], m, args.predict_gb)
                        for m in (per_image, grown)]
                print(f"canvas {canvas:4d} s {scale:<4g} remat {remat:5s}: fixed "
                      f"{got['fixed_mib']:6.0f} MiB, per image {per_image:7.0f} MiB, "
                      f"{got['step_s'] / args.batch:6.2f} s/image; micro-batch on "
                      f"{args.predict_gb:g} GB: {fits[0]}, at {args.to_canvas}: {fits[1]}",
                      flush=True)


if __name__ == "__main__":
    main()
