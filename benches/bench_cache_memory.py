"""Peak memory of cached training epochs against the size of the decoded cache.

    python benches/bench_cache_memory.py --data_dir=DATA [--caches=memory,encoded,none]
    python benches/bench_cache_memory.py --data_dir=BIG --caches=none --pixels=float,bytes

`--pixels`: batches of float32 in [0, 1] (the whole-image pipeline) or of the stored uint8
(make_dataset's as_bytes, what tile streaming reads: converted a tile at a time).

One process per cache setting (the peak covers a whole process). Each imports TensorFlow,
starts its runtime (one eager op and a tiny tf.data pipeline: device, thread pools; with
--cold, not), resets the kernel's peak-RSS counter (/proc/self/clear_refs), notes its RSS,
then builds the training dataset and reads `--epochs` epochs; it reports the peak RSS minus
that baseline and the ratio to the decoded split's size (the target: at most 1.3x for "memory").
"""

import argparse
import json
import os
import subprocess
import sys
import time


def _status_mib(field: str) -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    raise KeyError(field)


def child(data_dir: str, cache: str, epochs: int, batch_size: int, cold: bool,
          as_bytes: bool) -> dict:
    import needles_tf  # noqa: F401  (first: the CPU's oneDNN default)

    # isort: split
    import tensorflow as tf

    from needles_tf.input import dataset_info, make_dataset

    info = dataset_info(data_dir, "train")
    if not cold:
        list(tf.data.Dataset.range(64).map(lambda i: tf.cast(i, tf.float32) + tf.ones([2]),
                                           num_parallel_calls=2).batch(8).prefetch(2))
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset VmHWM to the current RSS
    baseline = _status_mib("VmRSS")
    start = time.perf_counter()
    ds = make_dataset(data_dir, "train", batch_size, training=True, cache=cache,
                      epochs=(0, epochs), as_bytes=as_bytes)
    built = time.perf_counter() - start
    count = sum(int(images.shape[0]) for images, _ in ds)
    decoded = info["count"] * info["height"] * info["width"] * info["channels"] / 2**20
    peak = _status_mib("VmHWM") - baseline
    return {"cache": cache, "pixels": "bytes" if as_bytes else "float", "images": count,
            "decoded_mib": decoded, "peak_mib": peak, "ratio": peak / decoded,
            "build_s": built, "total_s": time.perf_counter() - start}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data_dir", required=True)
    parser.add_argument("--caches", default="memory,encoded,none")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--cold", action="store_true",
                        help="baseline before TensorFlow's runtime starts")
    parser.add_argument("--pixels", default="float", help="float, bytes or both (float,bytes)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        cache, pixels = args.child.split(":")
        print(json.dumps(child(args.data_dir, cache, args.epochs, args.batch_size,
                               args.cold, pixels == "bytes")))
        return
    print(f"{'cache':>8} {'pixels':>6} {'decoded MiB':>11} {'peak - base MiB':>15} "
          f"{'ratio':>6} {'build s':>7} {'total s':>7}")
    for cache in args.caches.split(","):
        for pixels in args.pixels.split(","):
            out = subprocess.run([sys.executable, __file__, f"--data_dir={args.data_dir}",
                                  f"--child={cache}:{pixels}", f"--epochs={args.epochs}",
                                  f"--batch_size={args.batch_size}",
                                  *(["--cold"] if args.cold else [])], capture_output=True,
                                 text=True, check=True,
                                 env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
            r = json.loads(out.stdout.strip().splitlines()[-1])
            print(f"{r['cache']:>8} {r['pixels']:>6} {r['decoded_mib']:11.1f} "
                  f"{r['peak_mib']:15.1f} {r['ratio']:6.2f} {r['build_s']:7.1f} "
                  f"{r['total_s']:7.1f}", flush=True)


if __name__ == "__main__":
    main()
