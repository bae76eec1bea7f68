"""needles-predict-slide: a trained model over whole slides -> scores, heatmaps, regions.

  needles-predict-slide --model=runs/ncam/seed0 --output_dir=predictions slides/ a.svs

--model is a needles-train run directory or a needles-export SavedModel; slides are files,
directories (searched recursively for .svs, .tif, .tiff, .ndpi, .mrxs, ...) or --slide_list.
Each slide is read at the model's own resolution (microns per pixel of its training data, from
the run; --mpp overrides), over its tissue only, tile by tile with reading in background
threads, and gets in --output_dir: <slide>.heatmap.tif (pyramidal TIFF of the evidence, with
the slide's geometry at a known downsample: open it in QuPath or ASAP beside the slide),
<slide>.thumbnail.png, <slide>.geojson (regions above --threshold: QuPath's File > Import
objects), <slide>.evidence.npy and <slide>.json; slides.csv lists every slide. Ctrl-C and the
same command resume slide by slide; a slide that cannot be read is reported and skipped
(--strict stops).
"""

import os
import sys
import tempfile

from absl import flags

from needles_tf.bin import common

FLAGS = flags.FLAGS
flags.DEFINE_string("model", None, "Run directory of needles-train, or SavedModel of "
                    "needles-export.")
flags.DEFINE_string("output_dir", None, "Folder of the outputs (created).")
flags.DEFINE_string("slide_list", None, "Text file of slide paths, one a line.")
flags.DEFINE_float("mpp", None, "Microns per pixel the model reads slides at (default: what "
                   "its training data recorded).", lower_bound=0)
flags.DEFINE_float("assume_mpp", None, "Level-0 microns per pixel of slides that record none "
                   "(without it they are reported and skipped).", lower_bound=0)
flags.DEFINE_integer("tile_size", 1024, "Tile side in pixels at the model's resolution "
                     "(memory and speed only: tile borders are exact and only locations on "
                     "tissue are pooled, so score and map do not depend on it).",
                     lower_bound=1)
flags.DEFINE_float("threshold", 0.0, "GeoJSON regions: locations whose evidence for a needle "
                   "(logit units) is above this.")
flags.DEFINE_float("heatmap_limit", None, "Evidence drawn in full colour (default: each "
                   "slide's largest; give one to compare slides by eye).", lower_bound=0)
flags.DEFINE_integer("readers", 2, "Threads reading tiles.", lower_bound=1)
flags.DEFINE_integer("prefetch", 4, "Tiles read ahead of the model.", lower_bound=1)
flags.DEFINE_boolean("strict", False, "Stop at the first slide that cannot be used.")
flags.DEFINE_boolean("progress", True, "Show a progress bar (tiles).")

PROG = "needles-predict-slide"


def _inputs(argv: list[str]) -> list[str]:
    items = list(argv[1:])
    if FLAGS.slide_list:
        try:
            with open(FLAGS.slide_list) as f:
                items += [line.strip() for line in f if line.strip()]
        except OSError as e:
            sys.exit(f"{PROG}: error: --slide_list {FLAGS.slide_list}: {e.strerror}")
    return items


def _check_output_dir(folder: str) -> None:
    """Exits with one line when `folder` cannot be created or written in."""
    if os.path.exists(folder) and not os.path.isdir(folder):
        sys.exit(f"{PROG}: error: --output_dir={folder} is a file; expected a folder")
    try:
        os.makedirs(folder, exist_ok=True)
        tempfile.TemporaryFile(dir=folder).close()
    except OSError as e:
        sys.exit(f"{PROG}: error: --output_dir={folder}: cannot write there "
                 f"({e.strerror or e})")


def main(argv):
    common.require_flags(PROG, "model", "output_dir")
    for name in ("mpp", "assume_mpp"):  # 0 would divide by zero on the first slide
        if FLAGS[name].value is not None and not FLAGS[name].value > 0:
            sys.exit(f"{PROG}: error: --{name} must be positive microns per pixel, got "
                     f"{FLAGS[name].value}")
    items = _inputs(argv)
    if not items:
        sys.exit(f"{PROG}: error: no slides given (files, directories or --slide_list)")
    _check_output_dir(FLAGS.output_dir)  # before waiting for TensorFlow to load
    from needles_tf.generation.wsi import SlideError
    from needles_tf.serving import slide_predict
    from needles_tf.serving.slide_files import find_slides
    from needles_tf.serving.slide_model import SlideModelError, load_tile_model

    failed = []

    def report(path, message):
        failed.append(path)
        print(f"{PROG}: skipped {message}", file=sys.stderr, flush=True)

    def done(record, earlier):
        note = "done before" if earlier else (f"{record['tiles']} tiles, "
                                              f"{record['tiles_per_second']:.1f} tiles/s")
        print(f"{record['slide']}: P(needle) {record['probability']:.3f}, "
              f"{record['regions']} regions ({note})", flush=True)

    settings = slide_predict.SlideSettings(
        tile_size=FLAGS.tile_size, threshold=FLAGS.threshold, heatmap_limit=FLAGS.heatmap_limit,
        readers=FLAGS.readers, prefetch=FLAGS.prefetch, assume_mpp=FLAGS.assume_mpp)
    try:
        paths = find_slides(items)
        model = load_tile_model(FLAGS.model, FLAGS.mpp)
        print(f"{PROG}: {len(paths)} slides at {model.mpp:g} um per pixel, tiles of "
              f"{FLAGS.tile_size} pixels", flush=True)
        slide_predict.predict_slides(model, paths, FLAGS.output_dir, settings, FLAGS.strict,
                                     FLAGS.progress, report, done)
    except (SlideError, SlideModelError, OSError) as e:
        sys.exit(f"{PROG}: error: {e}")
    print(f"scores in {FLAGS.output_dir}/slides.csv")
    if failed:
        sys.exit(f"{PROG}: error: {len(failed)} of {len(paths)} slides skipped")


def run():
    common.run(main, __name__)


if __name__ == "__main__":
    run()
