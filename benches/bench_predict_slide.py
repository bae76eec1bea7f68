"""Whole-slide prediction at scale: peak memory and tiles per second of needles-predict-slide.

  python benches/bench_predict_slide.py --model=runs/demo/ncamelyon_64_1-10_seed0 \
      --sizes=10240,20480 --figure=docs/slide_heatmap.png

Writes synthetic slides of each size (0.25 um per pixel, a mosaic of fields of --field pixels
rendered by generation/slides.py, every third field with lesions; cached under --work_dir),
then runs needles-predict-slide on each in its own process and reports the process's peak
resident memory (os.wait4), the tiles, tiles per second and megapixels per second at the
model's resolution, and the seconds the model waited for the reading threads (near 0: reading
overlapped computing). Memory that stays flat from one size to the next is what "bounded" means
here. --figure draws the largest slide's thumbnail with its annotated lesions outlined beside
needles-predict-slide's thumbnail (the evidence over the tissue). Without --model, an untrained
BagNet of the demo's size (s = 1/4, RF 33, one block per stage) stands in (speed and memory only).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from needles_tf.generation import camelyon, pyramid_tiff, slides  # noqa: E402

MPP = 0.25


def write_mosaic(path: str, size: int, field: int, seed: int) -> None:
    """A size x size slide of (size / field)^2 rendered fields and its ASAP XML beside it."""
    if os.path.isfile(path):
        return
    image = np.lib.format.open_memmap(path + ".pixels.npy", mode="w+", dtype=np.uint8,
                                      shape=(size, size, 3))
    lesions = []
    count = size // field
    for i in range(count):
        for j in range(count):
            with_lesions = (i * count + j) % 3 == 0
            pixels, placed = slides.render_slide(np.random.default_rng([seed, i, j]), field,
                                                 (2, 4) if with_lesions else None)
            image[i * field:(i + 1) * field, j * field:(j + 1) * field] = pixels
            offset = np.array([j * field, i * field], float)
            lesions += [slides.SyntheticLesion(p.points + offset, p.group) for p in placed]
    image.flush()
    with open(path[:-4] + ".xml", "w") as f:
        f.write(slides.asap_xml(lesions))
    pyramid_tiff.write_pyramidal_tiff(path, image, mpp=MPP)
    del image
    os.remove(path + ".pixels.npy")


def untrained_run(work_dir: str) -> str:
    """A run directory with an untrained BagNet of the demo's size (no normalisation)."""
    folder = os.path.join(work_dir, "untrained_run")
    if not os.path.isfile(os.path.join(folder, "best.keras")):
        import needles_tf  # noqa: F401  oneDNN settings before TensorFlow
        from needles_tf.models import build_classifier

        os.makedirs(folder, exist_ok=True)
        build_classifier(3, receptive_field=33, width_scale=0.25, blocks=(1, 1, 1, 1),
                         normalization=False).save(os.path.join(folder, "best.keras"))
    return folder


def predict(model: str, slide: str, out_dir: str, args) -> dict:
    """Runs needles-predict-slide in a child process; its record plus peak memory and wall."""
    command = [sys.executable, "-m", "needles_tf.bin.predict_slide", f"--model={model}",
               f"--output_dir={out_dir}", f"--tile_size={args.tile_size}",
               f"--readers={args.readers}", "--noprogress", slide]
    if args.mpp:
        command.append(f"--mpp={args.mpp}")
    start = time.time()
    child = subprocess.Popen(command, cwd=os.path.dirname(os.path.dirname(
        os.path.abspath(__file__))))
    _, status, usage = os.wait4(child.pid, 0)
    if status:
        raise SystemExit(f"needles-predict-slide failed on {slide} (status {status})")
    name = camelyon.slide_name(slide)
    with open(os.path.join(out_dir, f"{name}.json")) as f:
        record = json.load(f)
    return {**record, "peak_mib": usage.ru_maxrss / 1024, "wall": time.time() - start}


def figure(slide: str, record: dict, out_dir: str, path: str) -> None:
    """The slide's thumbnail with its lesions outlined | needles-predict-slide's thumbnail."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import openslide
    from PIL import Image

    overlay = np.asarray(Image.open(os.path.join(out_dir, record["thumbnail"])))
    scale = overlay.shape[1] / record["width0"]
    size = overlay.shape[1::-1]
    thumbnail = np.asarray(openslide.OpenSlide(slide).get_thumbnail(size).resize(size))
    lesions = camelyon.parse_asap_xml(slide[:-4] + ".xml")
    fig, axes = plt.subplots(1, 2, figsize=(10, 5.2), layout="constrained")
    for ax, picture, title in ((axes[0], thumbnail, "slide, annotated lesions in blue"),
                               (axes[1], overlay, "evidence for metastases (red)")):
        ax.imshow(picture)
        ax.set_title(title, fontsize=10)
        ax.set_axis_off()
    for polygon in lesions.lesions:
        xy = np.vstack([polygon.points, polygon.points[:1]]) * scale
        axes[0].plot(xy[:, 0], xy[:, 1], color="blue", linewidth=0.8)
    fig.suptitle(f"{record['width0']} x {record['height0']} px slide at {MPP} um: "
                 f"P(metastasis) = {record['probability']:.3f}", fontsize=11)
    fig.savefig(path, dpi=90)
    Image.open(path).convert("RGB").quantize(128).save(path, optimize=True)  # a small file


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="run directory or SavedModel (default: untrained)")
    parser.add_argument("--mpp", type=float, help="the model's resolution, if not recorded")
    parser.add_argument("--sizes", default="10240,20480", help="slide sides in pixels")
    parser.add_argument("--field", type=int, default=5120, help="rendered field side")
    parser.add_argument("--tile_size", type=int, default=512)
    parser.add_argument("--readers", type=int, default=2)
    parser.add_argument("--work_dir", default="/tmp/bench_predict_slide")
    parser.add_argument("--figure", help="PNG of the largest slide's thumbnail and heatmap")
    args = parser.parse_args()
    os.makedirs(args.work_dir, exist_ok=True)
    model = args.model or untrained_run(args.work_dir)
    if not args.model and not args.mpp:
        args.mpp = 2.0
    rows = []
    for size in (int(s) for s in args.sizes.split(",")):
        slide = os.path.join(args.work_dir, f"mosaic_{size}.tif")
        start = time.time()
        write_mosaic(slide, size, min(args.field, size), seed=size)
        print(f"slide {size} x {size}: ready in {time.time() - start:.0f} s", flush=True)
        out_dir = os.path.join(args.work_dir, f"predicted_{size}")
        rows.append((size, slide, out_dir, predict(model, slide, out_dir, args)))
    print(f"\n{'slide':>13} {'grid px':>11} {'tiles':>6} {'tiles/s':>8} {'Mpx/s':>7} "
          f"{'read wait s':>11} {'wall s':>7} {'peak MiB':>9} {'P(needle)':>9}")
    for size, _, _, r in rows:
        grid = r["grid"]["width"] * r["grid"]["height"]
        seconds = r["tiles"] / r["tiles_per_second"]
        print(f"{size:>6} x {size:<6} {r['grid']['width']:>5} x {r['grid']['height']:<5}"
              f"{r['tiles']:>6} {r['tiles_per_second']:>8.2f} {grid / 1e6 / seconds:>7.2f} "
              f"{r['read_wait_seconds']:>11.1f} {r['wall']:>7.1f} {r['peak_mib']:>9.0f} "
              f"{r['probability']:>9.3f}")
    if args.figure:
        size, slide, out_dir, record = rows[-1]
        figure(slide, record, out_dir, args.figure)
        print(f"figure written to {args.figure}")


if __name__ == "__main__":
    main()
