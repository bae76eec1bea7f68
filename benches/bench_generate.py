"""nMNIST generation speed and size per preset: images/s and stored bytes per image.

    python benches/bench_generate.py                      # every preset, 2 workers
    python benches/bench_generate.py --presets 1024 --images 400 --workers 2

Times `records.write_dataset` over `--images` training items of each preset (worker start-up
included), so the figure is what a user sees, not a micro-benchmark of the composition alone.
"""

import argparse
import pathlib
import tempfile
import time

from needles_tf.data import records
from needles_tf.data.nmnist import PAPER_PRESETS, ExampleMaker, NMnistConfig


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", default=",".join(map(str, PAPER_PRESETS)), help="canvas sizes")
    parser.add_argument("--images", type=int, default=400, help="images per preset")
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    for canvas in map(int, args.presets.split(",")):
        config = NMnistConfig(canvas_size=canvas, num_clutter=PAPER_PRESETS[canvas])
        with tempfile.TemporaryDirectory() as directory:
            start = time.perf_counter()
            records.write_dataset(directory, "nmnist", {"bench": canvas}, {"train": args.images},
                                  ExampleMaker(config), num_shards=2 * args.workers,
                                  workers=args.workers, progress=False)
            elapsed = time.perf_counter() - start
            size = sum(p.stat().st_size for p in pathlib.Path(directory).glob("*.tfrecord"))
        print(f"canvas {canvas:5d}  clutter {config.num_clutter:4d}  O2I {100 * config.o2i:6.3f} %  "
              f"{args.images / elapsed:7.1f} images/s  {size / args.images / 1024:6.1f} KiB/image",
              flush=True)


if __name__ == "__main__":
    main()
