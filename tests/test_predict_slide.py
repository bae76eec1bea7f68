"""needles-predict-slide on synthetic slides the test writes: one tissue scanned at 0.25 and 0.4
um per pixel, a lesion-free slide and one without resolution, predicted by a BagNet built to
respond to the lesions' colour. Heatmap TIFFs open with openslide at the slide's aspect and the
expected downsample, evidence lies over the annotated lesions, GeoJSON regions lie inside the
slide, a slide without resolution is skipped in one line, and a killed run resumes."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import openslide
import pytest

from needles_tf.generation import camelyon, slides, wsi
from needles_tf.models import build_classifier
from needles_tf.models.bagnet import embedding_size
from needles_tf.serving import slide_outputs, slide_predict
from needles_tf.serving.slide_model import SlideModelError, load_tile_model

MPP = 2.0
HEIGHT, WIDTH = 1536, 2048  # level-0 pixels at 0.25 um: not square, to check the aspect
SETTINGS = slide_predict.SlideSettings(tile_size=96)


def lesion_model(pooling="max"):
    """RF 9, s = 1/16, no normalisation, `pooling`, every weight zero but: the stem's channel 0 is
    ReLU(0.89 R - G - 0.26 B) averaged over 3 x 3 pixels, positive on the lesions' purple and
    negative on tissue (pink, with its nuclei) and glass; each stage's projection shortcut
    carries channel 0 to the embedding (the zero main paths add nothing); the head gives
    evidence 100 * channel 0 - 1."""
    model = build_classifier(3, receptive_field=9, width_scale=1 / 16, pooling=pooling,
                             normalization=False, blocks=(1, 1, 1, 1))
    for weight in model.weights:
        weight.assign(np.zeros(weight.shape, "float32"))

    def kernel(layer, fill):
        value = np.zeros(layer.kernel.shape, "float32")
        fill(value)
        layer.kernel.assign(value)

    kernel(model.get_layer("stem_conv1"),
           lambda k: k[0, 0, :, 0].__setitem__(slice(None), [0.89, -1.0, -0.26]))
    kernel(model.get_layer("stem_conv2"), lambda k: k[:, :, 0, 0].__setitem__(
        (slice(None), slice(None)), 1 / 9))
    for layer in model.layers:
        if layer.name.endswith("_down_conv"):
            kernel(layer, lambda k: k.__setitem__((0, 0, 0, 0), 1.0))
    kernel(model.get_layer("logits"), lambda k: k.__setitem__((0, 1), 100.0))
    model.get_layer("logits").bias.assign(np.array([0.0, -1.0], "float32"))
    return model


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A run directory: the model, and summary.json's record of its data's resolution (what
    needles-train copies from dataset.json)."""
    folder = tmp_path_factory.mktemp("run")
    lesion_model().save(str(folder / "best.keras"))
    (folder / "summary.json").write_text(json.dumps({"dataset": {"params": {"crop_mpp": MPP}}}))
    return str(folder)


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    """a (0.25 um) and b (0.4 um): the same tissue with lesions; normal: none, and glass on its
    right half; nompp: a slide that records no resolution."""
    out = tmp_path_factory.mktemp("slides")
    found = {}
    for name, seed, lesions, mpp in (("a", 6, (4, 6), 0.25), ("b", 6, (4, 6), 0.4),
                                     ("normal", 7, None, 0.25), ("nompp", 7, None, None)):
        image, placed = slides.render_slide(np.random.default_rng(seed), WIDTH, lesions)
        placed = [p for p in placed if p.points[:, 1].max() < HEIGHT - 8]
        if name == "normal":
            image[:, WIDTH // 2:] = slides.PALETTE[slides.BACKGROUND]
        path = str(out / f"{name}.tif")
        moved = slides.write_slide(path, image[:HEIGHT], placed, 0.25, mpp, levels=4)
        if moved:
            (out / f"{name}.xml").write_text(slides.asap_xml(moved))
        found[name] = path
    return found


@pytest.fixture(scope="module")
def predicted(run, tree, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("predicted"))
    skipped = []
    model = load_tile_model(run)  # at the resolution the run recorded
    assert model.mpp == MPP
    rows = slide_predict.predict_slides(model, list(tree.values()), out, SETTINGS,
                                        progress=False,
                                        on_error=lambda path, message: skipped.append(message))
    return out, rows, skipped, model


def test_scores_table_and_the_slide_without_resolution(predicted, tree):
    out, rows, skipped, _ = predicted
    assert len(skipped) == 1 and "\n" not in skipped[0]
    assert skipped[0].startswith(tree["nompp"]) and "--assume_mpp" in skipped[0]
    table = {r["slide"]: r for r in slide_outputs.read_records(out).values()}
    assert sorted(table) == ["a", "b", "normal"]
    assert min(table["a"]["probability"], table["b"]["probability"]) > 0.6
    assert table["normal"]["probability"] < 0.3
    # glass is never read: no tile lies wholly in the normal slide's empty right half
    computed = np.isfinite(slide_outputs.load_evidence(out, table["normal"]))
    columns = computed.shape[1]
    assert computed[:, :columns // 3].any() and not computed[:, 3 * columns // 4:].any()
    with pytest.raises(wsi.SlideError, match="nompp.tif: no resolution"):
        slide_predict.predict_slides(predicted[3], [tree["nompp"]], out, SETTINGS, strict=True,
                                     progress=False)
    lines = open(os.path.join(out, slide_outputs.CSV_NAME)).read().splitlines()
    assert lines[0].startswith("slide,path,probability,score") and len(lines) == 5
    assert lines[-1].startswith("nompp,") and lines[-1].endswith("the slide's metadata "
                                                                  "(openslide.mpp-x); pass "
                                                                  "--assume_mpp=MICRONS to read "
                                                                  "it at a resolution you know")


@pytest.mark.parametrize("name, downsample", [("a", 64), ("b", 40)])
def test_heatmap_tiff_has_the_slides_geometry(predicted, tree, name, downsample):
    """One heatmap pixel per embedding location: 8 pixels at 2 um = 16 um, i.e. 64 level-0
    pixels of the 0.25 um scan and 40 of the 0.4 um one."""
    out, *_ = predicted
    record = slide_outputs.read_records(out)[name]
    heatmap = openslide.OpenSlide(os.path.join(out, record["heatmap"]))
    slide = openslide.OpenSlide(tree[name])
    grid = record["grid"]
    assert heatmap.dimensions == (embedding_size(grid["width"]), embedding_size(grid["height"]))
    assert float(heatmap.properties["openslide.mpp-x"]) == pytest.approx(16.0)
    assert record["evidence"]["downsample"] == pytest.approx(downsample)
    for side in (0, 1):
        assert slide.dimensions[side] / downsample == pytest.approx(heatmap.dimensions[side],
                                                                    abs=1)
    assert np.asarray(heatmap.read_region((0, 0), 0, heatmap.dimensions)).shape[:2] == \
        heatmap.dimensions[::-1]


def _lesion_mask(tree, name, record):
    """The annotation rasterised on the evidence map's grid (a location inside a lesion)."""
    evidence = record["evidence"]
    grid_downsample = evidence["downsample"] / 8
    annotations = camelyon.parse_asap_xml(tree[name][:-4] + ".xml")
    level = wsi.Level(0, record["grid"]["width"], record["grid"]["height"],
                           grid_downsample, record["width0"], record["height0"])
    mask = camelyon.rasterize(annotations, level).window(0, 0, level.height, level.width)
    return mask[1::8, 1::8][:evidence["height"], :evidence["width"]]  # location centres


@pytest.mark.parametrize("name", ["a", "b"])
def test_evidence_lies_over_the_lesions(predicted, tree, name):
    out, *_ = predicted
    record = slide_outputs.read_records(out)[name]
    evidence = np.asarray(slide_outputs.load_evidence(out, record))
    lesion = _lesion_mask(tree, name, record)
    finite = np.isfinite(evidence)
    assert lesion.sum() >= 10 and finite[lesion].all()
    # pointing game: the map's maximum is on a lesion (or its neighbour location)
    row, col = np.unravel_index(np.nanargmax(evidence), evidence.shape)
    assert lesion[max(row - 1, 0):row + 2, max(col - 1, 0):col + 2].any()
    assert np.nanmean(evidence[lesion]) > 0 > np.nanmean(evidence[~lesion & finite])


def test_both_scanners_give_the_same_map(predicted):
    out, *_ = predicted
    records = slide_outputs.read_records(out)
    a, b = (np.asarray(slide_outputs.load_evidence(out, records[n])) for n in "ab")
    assert a.shape == b.shape
    both = np.isfinite(a) & np.isfinite(b)
    assert both.mean() > 0.3 and np.corrcoef(a[both], b[both])[0, 1] > 0.9


def test_geojson_regions_lie_inside_the_slide(predicted, tree):
    out, *_ = predicted
    for name in ("a", "b", "normal"):
        record = slide_outputs.read_records(out)[name]
        collection = json.load(open(os.path.join(out, record["geojson"])))
        assert collection["type"] == "FeatureCollection"
        assert len(collection["features"]) == record["regions"]
        for feature in collection["features"]:
            assert feature["properties"]["objectType"] == "annotation"
            for ring in feature["geometry"]["coordinates"]:
                xy = np.array(ring)
                assert len(xy) >= 4 and (xy[0] == xy[-1]).all()
                assert (xy >= 0).all() and (xy[:, 0] <= record["width0"]).all() and \
                    (xy[:, 1] <= record["height0"]).all()
    assert slide_outputs.read_records(out)["a"]["regions"] >= 1


def test_a_saved_model_predicts_as_its_run(run, predicted, tree, tmp_path):
    from needles_tf.serving.export import export_saved_model

    out, *_ = predicted
    saved = load_tile_model(export_saved_model(lesion_model(), str(tmp_path / "saved"), MPP))
    assert saved.mpp == MPP  # the export's own record of the resolution
    record = slide_predict.predict_slide(saved, tree["b"], str(tmp_path), SETTINGS, False)
    expected = slide_outputs.read_records(out)["b"]
    assert record["probability"] == pytest.approx(expected["probability"], abs=1e-6)
    np.testing.assert_allclose(slide_outputs.load_evidence(str(tmp_path), record),
                               slide_outputs.load_evidence(out, expected), atol=1e-5)


def test_finished_slides_are_skipped(predicted, tree):
    out, _, _, model = predicted
    before = {n: os.stat(slide_outputs.path_of(out, n, "json")).st_mtime_ns for n in "ab"}
    earlier = []
    slide_predict.predict_slides(model, [tree["a"], tree["b"]], out, SETTINGS, progress=False,
                                 on_done=lambda record, done: earlier.append(done))
    assert earlier == [True, True]
    assert before == {n: os.stat(slide_outputs.path_of(out, n, "json")).st_mtime_ns
                      for n in "ab"}


def test_the_slide_score_does_not_depend_on_the_tile_size(tmp_path):
    """Only the locations on tissue are pooled (and mapped), whatever tiles they came in: mean
    pooling, where glass would weigh most, gives one score and one map with two tile sizes on
    a slide of lesions and glass."""
    image, _ = slides.render_slide(np.random.default_rng(6), WIDTH, (4, 6))
    image[:, 1200:] = slides.PALETTE[slides.BACKGROUND]
    path = str(tmp_path / "half.tif")
    slides.write_slide(path, image[:HEIGHT], [], 0.25, 0.25, levels=4)
    run = tmp_path / "run"
    run.mkdir()
    lesion_model("mean").save(str(run / "best.keras"))
    model = load_tile_model(str(run), MPP)
    records, maps = [], []
    for size in (48, 200):
        out = tmp_path / f"tiles{size}"
        out.mkdir()
        records.append(slide_predict.predict_slide(
            model, path, str(out), slide_predict.SlideSettings(tile_size=size), False))
        maps.append(np.asarray(slide_outputs.load_evidence(str(out), records[-1])))
    assert records[0]["tiles"] > records[1]["tiles"]
    for key in ("logit_0", "logit_1", "probability"):
        assert records[0][key] == pytest.approx(records[1][key], rel=1e-5, abs=1e-6)
    np.testing.assert_allclose(maps[0], maps[1], atol=1e-5)  # NaN off the tissue in both
    assert 0.2 < np.isfinite(maps[0]).mean() < 0.8


def test_a_retrained_model_is_predicted_again(predicted):
    """The resume key holds the model file's size and mtime; not the tile size (no result
    depends on it)."""
    model = predicted[3]
    key = SETTINGS.key(model)
    assert slide_predict.SlideSettings(tile_size=512).key(model) == key
    stat = os.stat(model.file)
    try:
        os.utime(model.file, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
        assert SETTINGS.key(model) != key
    finally:
        os.utime(model.file, ns=(stat.st_atime_ns, stat.st_mtime_ns))


def test_a_killed_run_resumes_slide_by_slide(run, tree, predicted, tmp_path):
    """needles-predict-slide killed (SIGKILL) after its first slide; the same slides again
    (here in this process, as the command does) keep it and do the rest."""
    out = tmp_path / "out"
    paths = [tree["a"], tree["normal"], tree["b"]]
    command = [sys.executable, "-m", "needles_tf.bin.predict_slide", f"--model={run}",
               f"--mpp={MPP}", f"--output_dir={out}", "--tile_size=96", "--noprogress", *paths]
    process = subprocess.Popen(command, env={**os.environ, "PYTHONPATH": os.getcwd()},
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    first = out / "a.json"
    deadline = time.time() + 120
    while not first.exists() and process.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    stdout, stderr = process.communicate()
    assert first.exists(), stderr.decode()[-2000:]
    assert b"a: P(needle)" in stdout
    finished_before = set(slide_outputs.read_records(str(out)))
    stamp = first.stat().st_mtime_ns
    earlier = {}
    slide_predict.predict_slides(predicted[3], paths, str(out), SETTINGS, progress=False,
                                 on_done=lambda record, done: earlier.update({
                                     record["slide"]: done}))
    assert earlier["a"] and first.stat().st_mtime_ns == stamp
    assert finished_before < {"a", "normal", "b"} == set(earlier)
    assert [name for name, done in earlier.items() if not done] == [
        name for name in ("normal", "b") if name not in finished_before]
    leftovers = [f for f in os.listdir(out) if ".tmp-" in f or f.startswith(".")]
    assert leftovers == []


def test_evaluate_slides_scores_the_predictions(predicted, tree, tmp_path):
    out, *_ = predicted
    labels = tmp_path / "labels.csv"
    labels.write_text("slide,label\na,1\nb,1\nnormal,0\nnompp,0\n")
    done = subprocess.run(
        [sys.executable, "-m", "needles_tf.bin.evaluate_slides", f"--predictions={out}",
         f"--labels={labels}", f"--annotation_dir={os.path.dirname(tree['a'])}",
         "--resamples=50", f"--output={tmp_path / 'eval.json'}"],
        env={**os.environ, "PYTHONPATH": os.getcwd()}, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "slide AUC 1.000" in done.stdout and "1 labelled but without a score" in done.stdout
    result = json.load(open(tmp_path / "eval.json"))
    assert result["missing"] == ["nompp"] and result["auc"]["auc"] == 1.0
    froc = result["froc"]
    assert froc["slides"] == 3 and froc["lesions"] >= 2 and 0 < froc["score"] <= 1
    assert "tensorflow" not in done.stderr.lower()


def test_wrong_settings_stop_in_one_line_before_any_slide(predicted, tree, tmp_path):
    model = predicted[3]
    with pytest.raises(SlideModelError, match="give --tile_size of at least 14"):
        slide_predict.predict_slides(model, [tree["a"]], str(tmp_path / "out"),
                                     slide_predict.SlideSettings(tile_size=5), progress=False)
    assert not (tmp_path / "out").exists()
    a_file = tmp_path / "a_file"
    a_file.write_text("")
    for flag, line in ((f"--output_dir={a_file}", f"--output_dir={a_file} is a file; expected "
                        "a folder"),
                       ("--assume_mpp=0", "--assume_mpp must be positive microns per pixel, "
                        "got 0.0")):
        done = subprocess.run(  # refused before TensorFlow loads
            [sys.executable, "-m", "needles_tf.bin.predict_slide", "--model=unused",
             f"--output_dir={tmp_path / 'out'}", flag, tree["a"]],
            env={**os.environ, "PYTHONPATH": os.getcwd()}, capture_output=True, text=True)
        assert done.returncode == 1 and done.stderr.strip().splitlines() == [
            f"needles-predict-slide: error: {line}"]
    from needles_tf.evaluation.slide_evaluation import evaluate_slides

    labels = tmp_path / "labels.csv"
    labels.write_text("slide,label\na,1\nnormal,0\n")
    with pytest.raises(ValueError, match="no_such: no such folder"):
        evaluate_slides(predicted[0], str(labels), str(tmp_path / "no_such"))
