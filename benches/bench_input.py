"""Training input-pipeline throughput per nMNIST preset (images/s delivered by make_dataset).

    python benches/bench_input.py --images 400

Generates `--images` training images per preset in a temporary directory, then times two
passes (epochs) of make_dataset(training=True): the first fills the cache where it fits, the
second is the steady state. Compare with bench_model.py's training images/s at the same canvas.
"""

import argparse
import tempfile
import time

from needles_tf.data import make_dataset, records
from needles_tf.data.nmnist import PAPER_PRESETS, ExampleMaker, NMnistConfig


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", default=",".join(map(str, PAPER_PRESETS)), help="canvas sizes")
    parser.add_argument("--images", type=int, default=400, help="training images per preset")
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    for canvas in map(int, args.presets.split(",")):
        config = NMnistConfig(canvas_size=canvas, num_clutter=PAPER_PRESETS[canvas])
        with tempfile.TemporaryDirectory() as directory:
            records.write_dataset(directory, "nmnist", {"bench": canvas},
                                  {"train": args.images, "val": 2, "test": 2}, ExampleMaker(config),
                                  num_shards=4, workers=args.workers, progress=False,
                                  extra={"image": {"height": canvas, "width": canvas, "channels": 1}})
            data = make_dataset(directory, "train", args.batch_size, training=True)
            rates = []
            for _ in range(2):
                start = time.perf_counter()
                count = sum(int(images.shape[0]) for images, _ in data)
                rates.append(count / (time.perf_counter() - start))
        print(f"canvas {canvas:5d}  first epoch {rates[0]:8.1f} images/s  "
              f"later epochs {rates[1]:8.1f} images/s", flush=True)


if __name__ == "__main__":
    main()
