"""Training input pipeline throughput per nMNIST preset (images/s delivered by make_dataset).

  python benches/bench_input.py --images=512 --epochs=3 [--presets=1024] [--cache=auto]

Generates a small training split per preset in a temporary directory, then iterates the
training pipeline (shuffle, decode, batch, float conversion) without a model. The first epoch
includes reading and decoding; later ones come from the cache when it fits.
"""

import argparse
import tempfile
import time

from needles_tf.generation import nmnist
from needles_tf.input import make_dataset


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", default="64,128,256,512,1024")
    parser.add_argument("--images", type=int, default=512, help="training images per preset")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--cache", default="auto")
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    print(f"{'canvas':>6} {'epoch':>5} {'images/s':>9}")
    for canvas in (int(c) for c in args.presets.split(",")):
        with tempfile.TemporaryDirectory() as out:
            nmnist.generate_nmnist(out, canvas_size=canvas, num_clutter=nmnist.PRESETS[canvas],
                                   workers=args.workers, num_shards=8, progress=False,
                                   duplicates={"train": 2, "val": 1, "test": 1})
            ds = make_dataset(out, "train", args.batch_size, True, cache=args.cache,
                              train_size=args.images)
            for e in range(args.epochs):
                start, count = time.perf_counter(), 0
                for images, _ in ds:
                    count += int(images.shape[0])
                print(f"{canvas:>6} {e:>5} {count / (time.perf_counter() - start):>9.1f}")


if __name__ == "__main__":
    main()
