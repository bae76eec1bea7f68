"""needles-make-ncamelyon: extract an nCAMELYON data set (TFRecords + dataset.json + tables).

  needles-make-ncamelyon --flagfile=flags/ncamelyon/crop256_o2i_1-10.cfg \
      --slide_dir=/data/camelyon17/training --annotation_dir=/data/camelyon17/lesion_annotations

Slides are found recursively under --slide_dir (center_K/patient_XXX_node_Y.tif); a slide with
<name>.xml in --annotation_dir (default: beside the slide) gives positive crops, one without gives
negatives. --mpp (or --magnification) reads every slide at one physical resolution, whatever its
scanner, from the pyramid level at or finer than it, resampled; a slide that records no
resolution is reported and skipped unless --assume_mpp gives one. A bad slide is reported and
skipped (--strict stops instead). A split with positives but no negatives stops the run
(--allow_missing_negatives writes it). Re-running with the same flags resumes slide by slide
and shard by shard.
"""

import logging
import os
import sys

from absl import app, flags

from needles_tf.bin import common
from needles_tf.data import metadata
from needles_tf.generation import camelyon, ncamelyon, ncamelyon_config, ncamelyon_tables, wsi

FLAGS = flags.FLAGS
flags.DEFINE_string("slide_dir", None, "Root of the slides (searched recursively).",
                    required=True)
flags.DEFINE_string("annotation_dir", None, "Folder of the ASAP XML files <slide name>.xml "
                    "(default: beside each slide).")
flags.DEFINE_string("stage_labels", None, "CAMELYON17 stage_labels.csv: take negatives only "
                    "from slides labelled negative (without it every unannotated slide is "
                    "taken as negative).")
flags.DEFINE_string("output_dir", None, "Dataset directory; default "
                    "tfrecords/ncamelyon_<crop_size>_<o2i_bin>.")
flags.DEFINE_integer("crop_size", 256, "Crop height = width in pixels at --mpp or --level (the "
                     "paper: 128, 256, 512, 1024).", lower_bound=1)
flags.DEFINE_enum("o2i_bin", "1-10", list(ncamelyon_config.O2I_BINS),
                  "Lesion fraction bin (lo, hi] in percent.")
flags.DEFINE_integer("crops_per_region", 50, "Random crops tried per lesion region.",
                     lower_bound=1)
flags.DEFINE_integer("level", 3, "Pyramid level of crops and masks, read as it is (the former "
                     "rule; one level is another scale on another scanner: prefer --mpp).",
                     lower_bound=0)
flags.DEFINE_float("mpp", None, "Resolution of crops and masks in microns per pixel, whatever "
                   "each slide's scanner (CAMELYON's level 3: about 1.94); overrides --level.",
                   lower_bound=0)
flags.DEFINE_float("magnification", None, "Resolution as an objective magnification: --mpp = "
                   "10 / M (40x: 0.25, 20x: 0.5, 5x: 2.0).", lower_bound=0)
flags.DEFINE_float("assume_mpp", None, "Level-0 microns per pixel of slides whose metadata "
                   "records none (without it they are reported and skipped under --mpp).",
                   lower_bound=0)
flags.DEFINE_boolean("allow_missing_negatives", False, "Write a split that has positives but "
                     "no negatives (its AUC is undefined) instead of stopping.")
flags.DEFINE_integer("seed", 0, "Random seed.", lower_bound=0)
flags.DEFINE_integer("workers", os.cpu_count() or 1, "Worker processes.", lower_bound=1)
flags.DEFINE_boolean("strict", False, "Stop at the first bad slide instead of skipping it.")
flags.DEFINE_list("lesion_groups", list(camelyon.DEFAULT_LESION_GROUPS),
                  "ASAP groups of lesion polygons (CAMELYON17: metastases; CAMELYON16: _0,_1).")
flags.DEFINE_list("exclusion_groups", list(camelyon.DEFAULT_EXCLUSION_GROUPS),
                  "ASAP groups of polygons cut out of lesions (CAMELYON16: _2).")
flags.DEFINE_list("val_centers", ["3"], "Centres of the validation split.")
flags.DEFINE_list("test_centers", ["4"], "Centres of the test split.")
flags.DEFINE_float("max_mean_green", 200.0, "Negatives need a mean green value below this.")
flags.DEFINE_integer("num_shards", 8, "Shards of the largest split.", lower_bound=1)
flags.DEFINE_boolean("overwrite", False, "Replace a dataset with other parameters.")
flags.DEFINE_boolean("progress", True, "Show progress bars.")


def _centers(name: str) -> tuple[int, ...]:
    try:
        return tuple(int(c) for c in FLAGS[name].value)
    except ValueError:
        raise ValueError(f"--{name}: expected comma-separated centre numbers, got "
                         f"{','.join(FLAGS[name].value)!r}") from None


def _mpp() -> float | None:
    if FLAGS.mpp is not None and FLAGS.magnification is not None:
        raise app.UsageError("give --mpp or --magnification, not both")
    if FLAGS.magnification is not None:
        return wsi.magnification_mpp(FLAGS.magnification)
    return FLAGS.mpp


def main(argv):
    common.no_arguments(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    output_dir = FLAGS.output_dir or os.path.join(
        "tfrecords", f"ncamelyon_{FLAGS.crop_size}_{FLAGS.o2i_bin}")
    try:
        config = ncamelyon_config.NcamelyonConfig(
            crop_size=FLAGS.crop_size, o2i_bin=FLAGS.o2i_bin,
            crops_per_region=FLAGS.crops_per_region, level=FLAGS.level, mpp=_mpp(),
            assume_mpp=FLAGS.assume_mpp, seed=FLAGS.seed,
            lesion_groups=tuple(FLAGS.lesion_groups),
            exclusion_groups=tuple(FLAGS.exclusion_groups),
            val_centers=_centers("val_centers"), test_centers=_centers("test_centers"),
            max_mean_green=FLAGS.max_mean_green, num_shards=FLAGS.num_shards)
        meta = ncamelyon.build_ncamelyon(
            FLAGS.slide_dir, output_dir, config, annotation_dir=FLAGS.annotation_dir,
            stage_labels=FLAGS.stage_labels, workers=FLAGS.workers, strict=FLAGS.strict,
            overwrite=FLAGS.overwrite, progress=FLAGS.progress,
            allow_missing_negatives=FLAGS.allow_missing_negatives)
    except (camelyon.SlideError, metadata.DatasetError, ValueError, OSError) as e:
        sys.exit(f"needles-make-ncamelyon: error: {e}")
    print(ncamelyon_tables.summary_text(meta))
    print(f"written to {output_dir} (tables in {ncamelyon_tables.SUMMARY_MD}, "
          f"{ncamelyon_tables.SUMMARY_CSV})")


def run():
    common.run(main, __name__)


if __name__ == "__main__":
    run()
