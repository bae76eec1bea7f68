"""The offline demo (`./run.sh`): nMNIST at O2I 19.1 % and 4.8 % from the embedded MNIST ->
train at 19.1 % -> evaluate at both -> export -> predict with heatmaps -> a results table.

  python -m needles_tf.bin.demo                 # nMNIST (the main job)
  python -m needles_tf.bin.demo --part=camelyon # nCAMELYON on synthetic slides

Every step runs the project's own binaries with the flagfiles in flags/demo/, exactly as a user
would; re-running skips what is finished (datasets, runs) and resumes what is not.
"""

import json
import os
import signal
import subprocess
import sys
import time

from absl import flags

from needles_tf import run_dir
from needles_tf.bin import common

FLAGS = flags.FLAGS
flags.DEFINE_enum("part", "nmnist", ["nmnist", "camelyon"], "Which demo to run.")
flags.DEFINE_string("data_root", "tfrecords/demo", "Where the demo datasets go.")
flags.DEFINE_string("runs_root", "runs/demo", "Where the demo runs go.")
flags.DEFINE_integer("predict_images", 4, "Test images to predict with heatmaps.", lower_bound=0)
flags.DEFINE_integer("seed", 0, "Seed of the demo's training run (initialisation and order); "
                     "the datasets are the same for every seed.", lower_bound=0)

NMNIST_PRESETS = ("19.1", "4.8")
# flags/ lives beside the package in the source tree (run.sh installs it editable)
FLAGS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "flags")


def _flagfile(name: str) -> str:
    return f"--flagfile={os.path.normpath(os.path.join(FLAGS_DIR, name))}"


def _binary(name: str, *args: str) -> None:
    """Runs `python -m needles_tf.bin.<name> ARGS`; stops the demo if it fails.

    Ctrl-C reaches the binary too (same process group): the demo waits for it to stop cleanly
    (a training run keeps its finished epochs), then exits 130.
    """
    command = [sys.executable, "-m", f"needles_tf.bin.{name}", *args]
    print(f"\n$ needles-{name.replace('_', '-')} {' '.join(args)}", flush=True)
    process = subprocess.Popen(command)
    interrupted = False
    while process.returncode is None:
        try:
            process.wait()
        except KeyboardInterrupt:
            interrupted = True
    if interrupted or process.returncode in (130, -signal.SIGINT):
        print("demo: interrupted; run the same command to resume", file=sys.stderr)
        sys.exit(130)
    if process.returncode != 0:
        sys.exit(f"demo: needles-{name.replace('_', '-')} failed (see above)")


def _write_test_images(data_dir: str, out_dir: str, count: int) -> list[tuple[str, int]]:
    """PNG files of the first `count` test images (half with a needle), for needles-predict."""
    import numpy as np
    import tensorflow as tf

    from needles_tf.input import make_dataset

    os.makedirs(out_dir, exist_ok=True)
    wanted = {0: count // 2, 1: count - count // 2}
    files = []
    for images, labels in make_dataset(data_dir, "test", 64, training=False, cache="none"):
        for image, label in zip(images.numpy(), labels.numpy()):
            if wanted.get(int(label), 0) > 0:
                wanted[int(label)] -= 1
                path = os.path.join(out_dir, f"test_{len(files)}_label{label}.png")
                png = tf.io.encode_png(np.round(image * 255).astype(np.uint8))
                tf.io.write_file(path, png)
                files.append((path, int(label)))
        if not any(wanted.values()):
            break
    return files


def _table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    line = lambda r: "  ".join(str(c).rjust(w) for c, w in zip(r, widths))  # noqa: E731
    return "\n".join([line(header), line(["-" * w for w in widths]), *map(line, rows)])


def _results(rows: list[list[str]], export_dir: str, predictions: list[dict],
             labels: list[int], seconds: float) -> str:
    text = [_table(rows, ["trained on", "tested on", "test images", "accuracy", "AUC",
                          "best/epochs", "train s", "run directory"])]
    if predictions:
        text.append(f"\nneedles-predict with {export_dir}:")
        text.append(_table([[os.path.basename(p["file"]), label, f"{p['probability']:.3f}",
                             p.get("heatmap", "-")] for p, label in zip(predictions, labels)],
                           ["image", "label", "P(needle)", "heatmap"]))
    text.append(f"\ndemo finished in {seconds / 60:.1f} min; TensorBoard: "
                f"tensorboard --logdir {FLAGS.runs_root}")
    return "\n".join(text)


def _row(trained_on: str, tested_on: str, model_dir: str, metrics: dict) -> list[str]:
    summary = run_dir.read_summary(model_dir)
    auc = metrics.get("auc")
    return [trained_on, tested_on, str(metrics["count"]), f"{metrics['accuracy']:.3f}",
            "-" if auc is None else f"{auc:.3f}", f"{summary['best_epoch']}/{summary['epochs']}",
            f"{summary['train_seconds']:.0f}", model_dir]


def _evaluate(model_dir: str, data_dir: str, name: str) -> dict:
    output = os.path.join(model_dir, f"eval_test_{name}.json")
    _binary("evaluate", f"--model_dir={model_dir}", f"--data_dir={data_dir}", "--split=test",
            f"--output={output}")
    with open(output) as f:
        return json.load(f)


def _nmnist() -> tuple[str, str, list[list[str]]]:
    """Data at both O2I ratios; one model warmed up on single digits, trained at 19.1 % and
    tested at both."""
    trained = NMNIST_PRESETS[0]
    data = {}
    for preset in NMNIST_PRESETS:
        data[preset] = os.path.join(FLAGS.data_root, f"nmnist_o2i_{preset}")
        # only the trained preset needs its 16 placements per training 3; the others are
        # only tested on, so their training split stays small (one placement per 3)
        _binary("make_nmnist", _flagfile(f"nmnist/o2i_{preset}.cfg"),
                _flagfile("demo/nmnist_data.cfg"), f"--output_dir={data[preset]}",
                *([] if preset == trained else ["--train_duplicates=1"]))
    warmup_data = os.path.join(FLAGS.data_root, "nmnist_single_digits")
    _binary("make_nmnist", _flagfile("demo/nmnist_warmup_data.cfg"),
            f"--output_dir={warmup_data}")
    warmup_dir = os.path.join(FLAGS.runs_root, f"nmnist_warmup_seed{FLAGS.seed}")
    _binary("train", _flagfile("demo/nmnist_warmup_train.cfg"), f"--data_dir={warmup_data}",
            f"--model_dir={warmup_dir}", f"--seed={FLAGS.seed}")
    model_dir = os.path.join(FLAGS.runs_root, f"nmnist_o2i_{trained}_seed{FLAGS.seed}")
    _binary("train", _flagfile("demo/nmnist_train.cfg"), f"--data_dir={data[trained]}",
            f"--model_dir={model_dir}", f"--init_from={warmup_dir}", f"--seed={FLAGS.seed}")
    # needles-train already tested its best model on its own dataset (summary.json)
    rows = [_row(f"nMNIST O2I {trained} %", f"nMNIST O2I {preset} %", model_dir,
                 run_dir.read_summary(model_dir)["test"] if preset == trained else
                 _evaluate(model_dir, data[preset], f"o2i_{preset}"))
            for preset in NMNIST_PRESETS]
    return data[trained], model_dir, rows


def _camelyon() -> tuple[str, str, list[list[str]]]:
    """Synthetic slides -> nCAMELYON crops -> a model trained and tested on them."""
    slide_dir = os.path.join(FLAGS.data_root, "slides")
    data_dir = os.path.join(FLAGS.data_root, "ncamelyon_64_1-10")
    model_dir = os.path.join(FLAGS.runs_root, f"ncamelyon_64_1-10_seed{FLAGS.seed}")
    _binary("make_slides", _flagfile("demo/slides.cfg"), f"--output_dir={slide_dir}")
    _binary("make_ncamelyon", _flagfile("demo/ncamelyon_data.cfg"),
            f"--slide_dir={slide_dir}", f"--annotation_dir={slide_dir}/lesion_annotations",
            f"--output_dir={data_dir}")
    _binary("train", _flagfile("demo/ncamelyon_train.cfg"), f"--data_dir={data_dir}",
            f"--model_dir={model_dir}", f"--seed={FLAGS.seed}")
    name = "nCAMELYON 64 px, O2I 1-10 %"
    return data_dir, model_dir, [_row(name, name, model_dir,
                                      _evaluate(model_dir, data_dir, "ncamelyon"))]


def main(argv):
    common.no_arguments(argv)
    start = time.time()
    data_dir, model_dir, rows = _nmnist() if FLAGS.part == "nmnist" else _camelyon()
    export_dir = os.path.join(model_dir, "saved_model")
    _binary("export", f"--model_dir={model_dir}", f"--export_dir={export_dir}")
    images = _write_test_images(data_dir, os.path.join(model_dir, "demo_images"),
                                FLAGS.predict_images)
    predictions = []
    if images:
        output = os.path.join(model_dir, "demo_predictions.jsonl")
        _binary("predict", f"--saved_model={export_dir}",
                f"--heatmap_dir={os.path.join(model_dir, 'demo_heatmaps')}",
                f"--output={output}", *[path for path, _ in images])
        with open(output) as f:
            predictions = [json.loads(line) for line in f]
    print("\n" + _results(rows, export_dir, predictions, [label for _, label in images],
                          time.time() - start))


def run():
    common.run(main, __name__)


if __name__ == "__main__":
    run()
