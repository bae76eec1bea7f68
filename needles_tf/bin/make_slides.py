"""needles-make-slides: write a small synthetic CAMELYON17-style slide tree.

  needles-make-slides --output_dir=/tmp/slides --num_patients=10 --seed=0

Writes center_K/patient_XXX_node_Y.tif (pyramidal tiled TIFFs with their resolution, that
openslide and QuPath open; --scanner_mpp=0.25,0.4 for two scanners of different resolution) and
lesion_annotations/*.xml (ASAP XML) for tests, benchmarks and the offline demo; then
  needles-make-ncamelyon --slide_dir=/tmp/slides --annotation_dir=/tmp/slides/lesion_annotations
"""

import sys

from absl import app, flags

from needles_tf.bin import common
from needles_tf.generation import slides

FLAGS = flags.FLAGS
flags.DEFINE_string("output_dir", None, "Folder of the slide tree.", required=True)
flags.DEFINE_integer("num_patients", 10, "Patients (spread over centres 0..4; every other "
                     "patient of a centre has lesions).", lower_bound=1)
flags.DEFINE_integer("seed", 0, "Random seed.", lower_bound=0)
flags.DEFINE_integer("size", 2048, "Level-0 width = height of a slide in pixels.",
                     lower_bound=256)
flags.DEFINE_integer("levels", 5, "Pyramid levels (level k is size / 2**k).", lower_bound=1)
flags.DEFINE_integer("tile_size", 256, "TIFF tile size (a multiple of 16).", lower_bound=16)
flags.DEFINE_integer("nodes_per_patient", 1, "Slides (lymph nodes) per patient.", lower_bound=1)
flags.DEFINE_list("scanner_mpp", [str(slides.DEFAULT_MPP)],
                  "Level-0 microns per pixel of the scanners; patient i is scanned by scanner "
                  "i % count (e.g. 0.25,0.4: a mixed cohort of two scanners); 'none' writes "
                  "slides without resolution metadata.")
flags.DEFINE_enum("xml_style", "camelyon17", ["camelyon17", "camelyon16"],
                  "Annotation groups: camelyon17 (metastases) or camelyon16 (_0/_1 tumour, _2 "
                  "exclusion).")


def _scanners() -> tuple[float | None, ...]:
    try:
        return tuple(None if v.lower() == "none" else float(v) for v in FLAGS.scanner_mpp)
    except ValueError:
        raise app.UsageError(f"--scanner_mpp: expected microns per pixel or 'none', got "
                             f"{','.join(FLAGS.scanner_mpp)!r}") from None


def main(argv):
    common.no_arguments(argv)
    try:
        paths = slides.make_synthetic_slides(
            FLAGS.output_dir, FLAGS.num_patients, FLAGS.seed, size=FLAGS.size,
            levels=FLAGS.levels, tile_size=FLAGS.tile_size,
            nodes_per_patient=FLAGS.nodes_per_patient, xml_style=FLAGS.xml_style,
            scanner_mpp=_scanners())
    except ValueError as e:
        sys.exit(f"needles-make-slides: error: {e}")
    print(f"{FLAGS.output_dir}: {len(paths)} slides, annotations in "
          f"{FLAGS.output_dir}/lesion_annotations")


def run():
    common.run(main, __name__)


if __name__ == "__main__":
    run()
