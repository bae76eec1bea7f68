"""nCAMELYON extraction speed: crops/s on a synthetic slide set (slides written first, untimed).

  python benches/bench_ncamelyon.py --patients=10 --slide_size=4096 --crop_size=128 --workers=2

Times the whole extraction (slide planning, negatives, record writing and hashing) from a cold
per-slide cache, and reports crops written per second. TensorFlow (which the record writer needs)
is imported before the clock starts: its import alone takes seconds.
"""

import argparse
import tempfile
import time

from needles_tf.generation import ncamelyon, ncamelyon_config, slides


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--patients", type=int, default=10)
    parser.add_argument("--slide_size", type=int, default=4096, help="level-0 pixels")
    parser.add_argument("--crop_size", type=int, default=64)
    parser.add_argument("--o2i_bin", default="1-10", choices=list(ncamelyon_config.O2I_BINS))
    parser.add_argument("--level", type=int, default=3)
    parser.add_argument("--crops_per_region", type=int, default=50)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    import tensorflow  # noqa: F401  (imported untimed)

    with tempfile.TemporaryDirectory() as tmp:
        slide_dir = f"{tmp}/slides"
        start = time.perf_counter()
        slides.make_synthetic_slides(slide_dir, args.patients, seed=0, size=args.slide_size,
                                     levels=max(args.level + 1, 5))
        made = time.perf_counter() - start
        config = ncamelyon_config.NcamelyonConfig(
            crop_size=args.crop_size, o2i_bin=args.o2i_bin, level=args.level,
            crops_per_region=args.crops_per_region, num_shards=4)
        start = time.perf_counter()
        meta = ncamelyon.build_ncamelyon(slide_dir, f"{tmp}/out", config,
                                         annotation_dir=f"{slide_dir}/lesion_annotations",
                                         workers=args.workers, progress=False)
        seconds = time.perf_counter() - start
    crops = sum(v["count"] for v in meta["splits"].values())
    print(f"{args.patients} slides of {args.slide_size}^2 made in {made:.1f} s; crop "
          f"{args.crop_size} bin {args.o2i_bin} level {args.level} workers {args.workers}: "
          f"{crops} crops in {seconds:.1f} s = {crops / seconds:.0f} crops/s")


if __name__ == "__main__":
    main()
