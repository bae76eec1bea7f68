"""Peak memory and time per pixel of one training step: tile-streamed against whole images.

    python benches/bench_streaming.py                      # this CPU: 512 .. 8192 px, s 1/4 and 1
    python benches/bench_streaming.py --sizes 1024,8192 --scales 0.25 --modes streamed
    KERAS_BACKEND=jax python benches/bench_streaming.py --tile 1024   # a GPU (no TensorFlow)

One step is the forward pass, the backward pass and the weight gradients of one image (batch 1,
RF 33, normalization off, which streaming requires and the whole-image runs share for a fair
comparison; max pooling; no optimizer update: its slots are a fixed 4 B per weight). Modes:
`streamed` (models/streaming.py, a fixed --tile), `none` (the whole image) and `block` (the
whole image under models/remat.py's rematerialisation). Each setting runs in a process of its
own after one warm-up step (which traces or compiles): peak memory is the whole process's
resident set (VmHWM, reset after the warm-up) on a CPU, the device's allocator peak on a GPU.
A setting whose memory estimate (models/remat.py's kept activations x 4 B, or one tile's for
streaming) does not fit in --memory_share of the memory available is skipped, never tried, and
so is one whose time, extrapolated from the last size measured, exceeds --max_s.

Under TensorFlow the streamed step is training/streamed.py's (tf.while_loops over the tiles).
Under JAX, where TensorFlow may be absent, this file drives the tiles itself (`JaxStreamedStep`)
and imports nothing of the package but models/.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time

MODES = ("streamed", "none", "block")
STARTED = time.perf_counter()
CHILD_ENVIRONMENT = dict(os.environ)  # the parent hides the GPU from itself, not the children
KEPT_SHARE = 0.9  # of the kept activations the runtime holds (training/memory.py's, rounded up)
FIXED_MIB = 1500.0  # runtime, weights, gradients, the image: what a process holds besides
# On a GPU under JAX the children run without XLA's convolution autotuning (unless XLA_FLAGS
# asks for it): with it, the 18 tile functions of a 2048 px image in 1024 px tiles had not
# compiled after 290 s on an H200 (JAX 0.11.2); without it they compile in about 10 s, and a
# step costs the same per pixel (0.71 us/px at 2048-8192 px, 0.69 with it at 1024 px).
NO_AUTOTUNE = "--xla_gpu_autotune_level=0"


def child(size: int, scale: float, mode: str, tile: int, rf: int, repeats: int) -> dict:
    """One setting's warm-up step, then `repeats` timed steps, in this process."""
    import needles_tf  # noqa: F401  (first: sets the CPU's oneDNN default before TensorFlow)

    # isort: split
    import keras

    from needles_tf.models import build_classifier

    phase("importing done")
    keras.utils.set_random_seed(0)
    model = build_classifier(1, receptive_field=rf, width_scale=scale, normalization=False)
    on_jax = keras.backend.backend() == "jax"
    step = (jax_step if on_jax else tf_step)(model, mode, tile, size)
    before = memory_mib("bytes_in_use")
    start, cpu = time.perf_counter(), time.process_time()
    step()
    phase("first step done")
    got = {"first_s": time.perf_counter() - start, "first_cpu_s": time.process_time() - cpu,
           "life_peak_mib": memory_mib("peak_bytes_in_use"),
           "before_mib": before, "fixed_mib": memory_mib("bytes_in_use"), "repeats": repeats}
    if not repeats:
        return got
    if not on_jax:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM, the peak resident set, to the current one
    start, cpu = time.perf_counter(), time.process_time()
    for _ in range(repeats):
        step()
    return {**got, "step_s": (time.perf_counter() - start) / repeats,
            "cpu_s": (time.process_time() - cpu) / repeats,
            "peak_mib": memory_mib("peak_bytes_in_use")}


def phase(what: str) -> None:
    """Tells the parent how far a child got (shown if the child fails or runs out of time)."""
    print(f"{what} at {time.perf_counter() - STARTED:.1f} s", file=sys.stderr, flush=True)


def memory_mib(jax_key: str) -> float:
    """The GPU's allocator counter `jax_key` under JAX, else this process's resident set
    (VmHWM, the peak, for a peak key; VmRSS otherwise)."""
    import keras

    if keras.backend.backend() == "jax":
        import jax

        stats = jax.devices()[0].memory_stats()
        if stats:
            return stats.get(jax_key, 0) / 2**20
    field = "VmHWM" if jax_key.startswith("peak") else "VmRSS"
    with open("/proc/self/status") as f:
        line = next(line for line in f if line.startswith(field + ":"))
    return int(line.split()[1]) / 1024


def _loss():
    import keras

    return keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def tf_step(model, mode: str, tile: int, size: int):
    """A compiled TensorFlow step on a random size x size image: a callable that runs it once.
    The image is made by TensorFlow: tf.constant of a NumPy array holds two more copies of it
    for a while (+512 MiB at 8192 px, seen here)."""
    import tensorflow as tf

    from needles_tf.models.remat import rematerialised
    from needles_tf.models.streaming import StreamedClassifier
    from needles_tf.training.streamed import streamed_gradients

    loss, variables = _loss(), model.trainable_variables
    images = tf.random.stateless_uniform((1, size, size, 1), seed=(0, 0))
    labels = tf.constant([1])
    if mode == "streamed":
        streamed = StreamedClassifier(model, tile)

        @tf.function
        def gradients(x, y):
            return streamed_gradients(streamed, x, lambda logits: loss(y, logits), variables)[0]
    else:
        trained = rematerialised(model, mode)

        @tf.function
        def gradients(x, y):
            with tf.GradientTape() as tape:
                value = loss(y, trained(x, training=True))
            return tape.gradient(value, variables)

    return lambda: [g.numpy() for g in gradients(images, labels)]


def jax_step(model, mode: str, tile: int, size: int):
    """A JAX step on a random size x size image (whole: one jitted gradient; streamed:
    JaxStreamedStep): a callable that runs it once."""
    import jax
    import jax.numpy as jnp

    from needles_tf.models.remat import rematerialised
    from needles_tf.models.streaming import StreamedClassifier

    images = jax.random.uniform(jax.random.key(0), (1, size, size, 1))
    labels = jnp.array([1])
    if mode == "streamed":
        from jax_streamed import JaxStreamedStep  # beside this file

        step = JaxStreamedStep(StreamedClassifier(model, tile), _loss(), phase)
        return lambda: jax.block_until_ready(step(images, labels))
    trained, loss = rematerialised(model, mode), _loss()
    non_trainable = [v.value for v in trained.non_trainable_variables]

    def objective(values, x, y):
        logits, _ = trained.stateless_call(values, non_trainable, x, training=True)
        return loss(y, logits)

    gradients = jax.jit(jax.grad(objective))
    values = [v.value for v in trained.trainable_variables]
    return lambda: jax.block_until_ready(gradients(values, images, labels))


def estimate_gib(size: int, scale: float, mode: str, tile: int, rf: int) -> float:
    """Memory a setting needs (GiB): kept activations x 4 B x KEPT_SHARE (one tile's for
    streaming), plus FIXED_MIB. Builds the model symbolically (no weights' values needed)."""
    import needles_tf  # noqa: F401

    # isort: split
    from needles_tf.models import build_classifier
    from needles_tf.models.remat import kept_activations

    model = build_classifier(1, receptive_field=rf, width_scale=scale, normalization=False)
    side = min(size, tile) if mode == "streamed" else size
    kept = kept_activations(model, side, side, "none" if mode == "streamed" else mode)
    return (KEPT_SHARE * 4 * kept + FIXED_MIB * 2**20) / 2**30


def available_gib() -> float:
    """Memory a child may use: XLA's share (XLA_PYTHON_CLIENT_MEM_FRACTION, 0.75 unless set)
    of the GPU's free memory where nvidia-smi answers, else the host's MemAvailable."""
    smi = shutil.which("nvidia-smi")
    if smi:
        free = subprocess.run([smi, "--query-gpu=memory.free", "--format=csv,noheader,nounits",
                               "--id=0"], capture_output=True, text=True, check=False)
        if free.stdout.strip().isdigit():
            share = float(os.environ.get("XLA_PYTHON_CLIENT_MEM_FRACTION", 0.75))
            return share * int(free.stdout) / 1024
    with open("/proc/meminfo") as f:
        fields = dict(line.split(":", 1) for line in f)
    return int(fields["MemAvailable"].split()[0]) / 2**20


def measure(size: int, scale: float, mode: str, tile: int, rf: int, repeats: int,
            timeout_s: float) -> dict:
    """Runs one setting in a child process; {'error': ...} when it fails or times out."""
    args = [sys.executable, __file__, "--child",
            json.dumps([size, scale, mode, tile, rf, repeats])]
    env = {**CHILD_ENVIRONMENT, "TF_CPP_MIN_LOG_LEVEL": "2"}
    xla_flags = env.get("XLA_FLAGS", "")
    if (env.get("KERAS_BACKEND") == "jax" and shutil.which("nvidia-smi")
            and "autotune" not in xla_flags):
        env["XLA_FLAGS"] = f"{xla_flags} {NO_AUTOTUNE}".strip()
    try:
        result = subprocess.run(args, capture_output=True, text=True, check=False, env=env,
                                timeout=timeout_s)
    except subprocess.TimeoutExpired as timeout:
        return {"error": f"took over {timeout_s:.0f} s ({last_phase(timeout.stderr)})"}
    if result.returncode != 0:
        tail = result.stderr.strip().splitlines()[-1:] or ["?"]
        return {"error": f"exit {result.returncode}: {tail[0][:160]}"}
    return json.loads(result.stdout.strip().splitlines()[-1])


def last_phase(stderr) -> str:
    """The last of a child's phase() lines."""
    text = stderr.decode(errors="replace") if isinstance(stderr, bytes) else stderr or ""
    phases = [line for line in text.splitlines() if " at " in line and line.endswith(" s")]
    return phases[-1] if phases else "started"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="512,1024,2048,4096,8192")
    parser.add_argument("--scales", default="0.25,1")
    parser.add_argument("--modes", default=",".join(MODES))
    parser.add_argument("--tile", type=int, default=512, help="streamed tile side, pixels")
    parser.add_argument("--rf", type=int, default=33)
    parser.add_argument("--repeats", type=int, default=2,
                        help="timed steps after the first; none where a step would take "
                        "over --repeat_below_s (its time is then the first step's)")
    parser.add_argument("--repeat_below_s", type=float, default=30)
    parser.add_argument("--max_s", type=float, default=600,
                        help="skip a setting whose steps would take longer in all")
    parser.add_argument("--memory_share", type=float, default=0.6,
                        help="of the available memory a setting's estimate may take")
    parser.add_argument("--deadline_s", type=float,
                        help="start no setting after this many seconds (a leased GPU)")
    parser.add_argument("--json", help="also write the results to this file, as they come")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(*json.loads(args.child))))
        return
    # the parent only builds models to estimate their memory: were it to start on the GPU,
    # its runtime would take the device's memory (XLA takes 75 % at once) from the children
    os.environ.update(CUDA_VISIBLE_DEVICES="", JAX_PLATFORMS="cpu")
    import keras

    room = args.memory_share * available_gib()
    print(f"{keras.backend.backend()}: one training step, batch 1, RF {args.rf}, no "
          f"normalization, streamed tile {args.tile}; settings estimated above {room:.1f} GiB "
          f"or {args.max_s:g} s skipped", flush=True)
    results, deadline = [], time.monotonic() + (args.deadline_s or float("inf"))
    for scale in map(float, args.scales.split(",")):
        for mode in args.modes.split(","):
            per_pixel = None  # seconds per pixel at the last size measured
            for size in map(int, args.sizes.split(",")):
                row = {"scale": scale, "mode": mode, "size": size, "tile": args.tile}
                need = estimate_gib(size, scale, mode, args.tile, args.rf)
                guess = per_pixel * size**2 if per_pixel else 0.0
                repeats = args.repeats if guess <= args.repeat_below_s else 0
                left = deadline - time.monotonic()
                if left <= 0:
                    row["skipped"] = "past --deadline_s"
                elif need > room:
                    row["skipped"] = f"needs ~{need:.0f} GiB"
                elif guess * (1 + repeats) > args.max_s:
                    row["skipped"] = f"~{guess:.0f} s a step"
                else:
                    row.update(measure(size, scale, mode, args.tile, args.rf, repeats,
                                       timeout_s=min(left, 3 * guess * (1 + repeats)
                                                     + args.max_s)))
                if "first_s" in row:
                    per_pixel = row.get("step_s", row["first_s"]) / size**2
                    row["us_per_px"] = 1e6 * per_pixel
                results.append(row)
                print(format_row(row), flush=True)
                if args.json:
                    with open(args.json, "w") as f:
                        json.dump(results, f, indent=1)
    print(markdown(results, keras.backend.backend()))


def format_row(row: dict) -> str:
    head = f"s {row['scale']:<4g} {row['mode']:8s} {row['size']:5d} px: "
    if "first_s" not in row:
        return head + ("skipped: " + row["skipped"] if "skipped" in row else row["error"])
    timed = (f"{row['step_s']:7.2f} s/step ({row['cpu_s']:7.2f} s CPU), "
             f"peak {row['peak_mib']:6.0f} MiB after the first" if row["repeats"] else
             "no timed step: the first's time")
    return head + (f"life peak {row['life_peak_mib']:6.0f} MiB, first step "
                   f"{row['first_s']:7.1f} s; {timed}; {row['us_per_px']:6.3f} us/px")


def markdown(results: list[dict], backend: str) -> str:
    """A table for the README (one row per scale and size, a column group per mode) and the
    issue's two targets: the streamed peak from 1024 px up, streamed / block time at 1024."""
    modes = list(dict.fromkeys(r["mode"] for r in results))
    memory = "GiB (device peak)" if backend == "jax" else "GiB (process peak)"
    lines = ["| s | px | " + " | ".join(f"{m} {memory} | {m} us/px" for m in modes) + " |",
             "|---|---|" + "---|---|" * len(modes)]
    cell = {(r["scale"], r["size"], r["mode"]): r for r in results}
    for scale, size in dict.fromkeys((r["scale"], r["size"]) for r in results):
        cells = []
        for mode in modes:
            r = cell.get((scale, size, mode), {})
            if "us_per_px" in r:
                peak = r.get("peak_mib", r["life_peak_mib"]) if backend == "jax" else \
                    r["life_peak_mib"]
                time_note = "" if r["repeats"] else " (first)"
                cells += [f"{peak / 1024:.2f}", f"{r['us_per_px']:.3g}{time_note}"]
            else:
                cells += [r.get("skipped", r.get("error", "-")), "-"]
        lines.append(f"| {scale:g} | {size} | " + " | ".join(cells) + " |")
    for scale in dict.fromkeys(r["scale"] for r in results):
        streamed = {r["size"]: r for r in results if r["scale"] == scale
                    and r["mode"] == "streamed" and "us_per_px" in r}
        block = cell.get((scale, 1024, "block"), {})
        if 1024 in streamed and max(streamed) > 1024:
            top = max(streamed)
            lines.append(f"s {scale:g}: streamed peak {top} / 1024 px: "
                         f"{streamed[top]['life_peak_mib'] / streamed[1024]['life_peak_mib']:.2f}x"
                         " (target <= 1.3)")
        if 1024 in streamed and "us_per_px" in block:
            ratio = streamed[1024]["us_per_px"] / block["us_per_px"]
            cpu = (f", CPU time {streamed[1024]['cpu_s'] / block['cpu_s']:.2f}x"
                   if "cpu_s" in block and "cpu_s" in streamed[1024] else "")
            lines.append(f"s {scale:g}: streamed / block time per pixel at 1024 px: "
                         f"{ratio:.2f}x{cpu} (target <= 1.6)")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
