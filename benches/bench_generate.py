"""nMNIST generation speed, size and memory per canvas size: images/s, bytes and peak RSS.

  python benches/bench_generate.py --workers=2 --images=800 [--sizes=1024]
  python benches/bench_generate.py --workers=2 --images=6 --sizes=8192     # large canvases

Clutter is the paper's for its sizes and the paper's density (400 per 1024^2) elsewhere, or
--clutter. CPU s/image counts the workers and the writer (robust on a loaded machine). Target
(2 cores): canvas 1024 / 400 clutter >= 115 images/s with --workers=2, <= 80 KiB/image.
Times include starting the worker processes and writing/hashing the shards.
Peak RSS: the main process (the writer, with TensorFlow) and the largest worker (the peak of its
own memory, VmHWM, sampled while it runs), against the estimate of its canvases that
generate_nmnist checks (a worker's own memory, about 70 MiB, comes on top).
"""

import argparse
import os
import resource
import tempfile
import threading
import time

from needles_tf.generation import mnist, nmnist, writer

DENSITY = 400 / 1024 ** 2  # the paper's clutter per pixel at 1024^2


def _hwm_mib(pid: int | str) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return 0.0


class WorkerPeak(threading.Thread):
    """The largest VmHWM among this process's children, sampled every 50 ms."""

    def __init__(self):
        super().__init__(daemon=True)
        self.peak, self._done = 0.0, threading.Event()

    def run(self):
        me = str(os.getpid())
        while not self._done.wait(0.05):
            for pid in filter(str.isdigit, os.listdir("/proc")):
                try:
                    with open(f"/proc/{pid}/stat") as f:
                        if f.read().rsplit(")", 1)[1].split()[1] == me:
                            self.peak = max(self.peak, _hwm_mib(pid))
                except (OSError, IndexError):
                    continue

    def stop(self) -> float:
        self._done.set()
        self.join()
        return self.peak


def _cpu_seconds() -> float:
    """CPU time of this process and its finished children (the workers, once shut down)."""
    return sum(u.ru_utime + u.ru_stime for u in (resource.getrusage(resource.RUSAGE_SELF),
                                                   resource.getrusage(resource.RUSAGE_CHILDREN)))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", "--presets", default="64,128,256,512,1024",
                        help="canvas sizes")
    parser.add_argument("--clutter", type=int, help="clutter digits (default: see above)")
    parser.add_argument("--images", type=int, default=800, help="images per size")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--mnist", default="embedded")
    args = parser.parse_args()
    data = mnist.load_mnist(args.mnist)
    import tensorflow  # noqa: F401  (the writer's; imported here so that no size's time counts it)
    print(f"{'canvas':>6} {'clutter':>7} {'O2I %':>8} {'images/s':>9} {'s/image':>8} "
          f"{'CPU s/im':>8} "
          f"{'KiB/image':>10} {'est. KiB':>9} {'worker MiB':>10} {'est. MiB':>8} "
          f"{'main MiB':>8}")
    for canvas in (int(c) for c in args.sizes.split(",")):
        clutter = (args.clutter if args.clutter is not None
                   else nmnist.PRESETS.get(canvas, round(DENSITY * canvas ** 2)))
        composer = nmnist.NmnistComposer(data, canvas, clutter,
                                         duplicates={"train": 2, "val": 0, "test": 0})
        count = min(args.images, composer.split_size("train"))
        record = nmnist.png_bytes(canvas, clutter + 1) + nmnist.RECORD_BYTES
        chunk = nmnist.chunk_images(canvas)
        estimate = nmnist.canvas_bytes(canvas, clutter + 1) / 2 ** 20
        with tempfile.TemporaryDirectory() as out:
            sampler = WorkerPeak()
            sampler.start()
            start, cpu = time.perf_counter(), _cpu_seconds()
            writer.write_dataset(
                out, kind="nmnist", params={"bench": canvas},
                image={"height": canvas, "width": canvas, "channels": 1},
                split_sizes={"train": count}, make_example=composer, num_shards=4,
                workers=args.workers, progress=False, chunk_size=chunk)
            seconds, cpu = time.perf_counter() - start, _cpu_seconds() - cpu
            worker = sampler.stop()
            size = sum(os.path.getsize(os.path.join(out, f)) for f in os.listdir(out)
                       if f.endswith(".tfrecord"))
        print(f"{canvas:>6} {clutter:>7} {100 * nmnist.o2i(canvas):>8.3g} "
              f"{count / seconds:>9.2f} {seconds / count:>8.3f} {cpu / count:>8.3f} "
              f"{size / count / 1024:>10.1f} "
              f"{record / 1024:>9.1f} {worker:>10.0f} {estimate:>8.0f} "
              f"{_hwm_mib('self'):>8.0f}", flush=True)


if __name__ == "__main__":
    main()
