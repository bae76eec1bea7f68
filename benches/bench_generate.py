"""nMNIST generation speed and size per preset: images/s and bytes/image stored.

  python benches/bench_generate.py --workers=2 --images=800 [--presets=1024]

Target (2 cores): canvas 1024 / 400 clutter >= 115 images/s with --workers=2, <= 80 KiB/image.
Times include starting the worker processes and writing/hashing the shards.
"""

import argparse
import os
import tempfile
import time

from needles_tf.generation import mnist, nmnist, writer


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", default="64,128,256,512,1024",
                        help="canvas sizes (clutter from the paper's presets)")
    parser.add_argument("--images", type=int, default=800, help="images per preset")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--mnist", default="embedded")
    args = parser.parse_args()
    data = mnist.load_mnist(args.mnist)
    print(f"{'canvas':>6} {'clutter':>7} {'O2I %':>6} {'images/s':>9} {'KiB/image':>9}")
    for canvas in (int(c) for c in args.presets.split(",")):
        composer = nmnist.NmnistComposer(data, canvas, nmnist.PRESETS[canvas],
                                         duplicates={"train": 2, "val": 0, "test": 0})
        count = min(args.images, composer.split_size("train"))
        with tempfile.TemporaryDirectory() as out:
            start = time.perf_counter()
            writer.write_dataset(
                out, kind="nmnist", params={"bench": canvas},
                image={"height": canvas, "width": canvas, "channels": 1},
                split_sizes={"train": count}, make_example=composer, num_shards=4,
                workers=args.workers, progress=False)
            seconds = time.perf_counter() - start
            size = sum(os.path.getsize(os.path.join(out, f)) for f in os.listdir(out)
                       if f.endswith(".tfrecord"))
        print(f"{canvas:>6} {nmnist.PRESETS[canvas]:>7} {100 * nmnist.o2i(canvas):>6.3g} "
              f"{count / seconds:>9.1f} {size / count / 1024:>9.1f}")


if __name__ == "__main__":
    main()
