"""TFRecords: schema round trip, deterministic parallel writer, resume / repair, clear errors."""

import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
from mnist_files import write_idx_set

from needles_tf.data import metadata, schema
from needles_tf.generation import mnist, nmnist, writer

GEN = dict(canvas_size=32, num_clutter=1, num_shards=3, progress=False)


def shard_bytes(directory):
    return {f: open(os.path.join(directory, f), "rb").read()
            for f in sorted(os.listdir(directory)) if f.endswith(".tfrecord")}


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("ref"))
    meta = nmnist.generate_nmnist(out, workers=1, **GEN)
    return out, meta, shard_bytes(out)


@pytest.mark.parametrize("channels", [1, 3])
def test_example_round_trip(channels):
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (17, 23, channels), dtype=np.uint8)
    mask = (rng.random((17, 23)) > 0.5).astype(np.uint8)
    serialized = schema.encode_example(image, 1, 0.25, [1, 2, 11, 22], "slide_7/lesion_2",
                                        clutter_count=5, mask=mask)
    # Our hand-written protobuf is a real tf.train.Example.
    assert tf.train.Example.FromString(serialized).features.feature["label"].int64_list.value == [1]
    p = schema.Decoder().decode(serialized)
    np.testing.assert_array_equal(tf.io.decode_png(p["image/encoded"]).numpy(), image)
    np.testing.assert_array_equal(tf.io.decode_png(p["object/mask"]).numpy()[:, :, 0], mask)
    assert [p[k].numpy() for k in ("image/height", "image/width", "image/channels")] == [
        17, 23, channels]
    assert p["label"].numpy() == 1 and p["o2i"].numpy() == pytest.approx(0.25)
    assert list(p["object/bbox"].numpy()) == [1, 2, 11, 22]
    assert p["clutter/count"].numpy() == 5 and p["source/id"].numpy() == b"slide_7/lesion_2"


def test_negative_example_has_empty_box_and_no_mask():
    p = schema.Decoder().decode(schema.encode_example(np.zeros((8, 8), np.uint8), 0, 0.0, None,
                                                     "x"))
    assert p["object/bbox"].numpy().size == 0 and p["object/mask"].numpy() == b""


def test_generated_records_round_trip(reference):
    out, meta, _ = reference
    composer = nmnist.NmnistComposer(mnist.load_mnist("embedded"), 32, 1)
    for split in metadata.SPLITS:
        info = meta["splits"][split]
        assert info["count"] == composer.split_size(split) == 2 * info["positives"]
        paths = metadata.verify_shards(out, split)
        assert [os.path.basename(p) for p in paths] == [
            metadata.shard_name(split, i, len(paths)) for i in range(len(paths))]
        serialized = list(tf.data.TFRecordDataset(paths).as_numpy_iterator())
        assert len(serialized) == info["count"]
        for index in (0, 1, info["count"] - 1):
            assert serialized[index] == composer(split, index)[0]
    assert metadata.read_metadata(out)["params"]["canvas_size"] == 32


def test_output_is_identical_with_two_workers(reference, tmp_path):
    _, meta, ref_bytes = reference
    meta2 = nmnist.generate_nmnist(str(tmp_path), workers=2, **GEN)
    assert shard_bytes(str(tmp_path)) == ref_bytes
    assert meta2["splits"] == meta["splits"]


class FailAt:
    """make_example that dies at one image, like a generator killed mid-way."""

    def __init__(self, inner, split, index):
        self.inner, self.split, self.index = inner, split, index

    def __call__(self, split, index):
        if (split, index) == (self.split, self.index):
            raise RuntimeError("killed")
        return self.inner(split, index)


def _write(out, make_example, composer, workers=1):
    sizes = {s: composer.split_size(s) for s in metadata.SPLITS}
    return writer.write_dataset(  # positional form, image given through `extra`
        out, "nmnist", {"test": 1}, sizes, make_example,
        num_shards={"train": 4, "val": 1, "test": 2}, workers=workers, progress=False,
        extra={"image": {"height": 32, "width": 32, "channels": 1}, "note": "resume test"})


def test_resume_after_interruption_keeps_finished_shards(tmp_path):
    out = str(tmp_path)
    composer = nmnist.NmnistComposer(mnist.load_mnist("embedded"), 32, 1)
    with pytest.raises(RuntimeError, match="killed"):
        _write(out, FailAt(composer, "train", 500), composer)  # dies in train shard 2 of 4
    assert not os.path.exists(os.path.join(out, metadata.METADATA_FILE))
    partial = json.load(open(os.path.join(out, metadata.PARTIAL_FILE)))
    finished = [s["file"] for s in partial["splits"]["train"]["shards"]]
    assert finished == ["train-00000-of-00004.tfrecord", "train-00001-of-00004.tfrecord"]
    assert not [f for f in os.listdir(out) if ".tmp" in f]
    mtimes = {f: os.stat(os.path.join(out, f)).st_mtime_ns for f in finished}
    meta = _write(out, composer, composer, workers=2)
    assert {f: os.stat(os.path.join(out, f)).st_mtime_ns for f in finished} == mtimes
    assert meta["splits"]["train"]["count"] == composer.split_size("train")
    assert [len(meta["splits"][s]["shards"]) for s in metadata.SPLITS] == [4, 1, 2]
    assert metadata.read_metadata(out)["note"] == "resume test"
    assert not os.path.exists(os.path.join(out, metadata.PARTIAL_FILE))
    clean = str(tmp_path / "clean")
    _write(clean, composer, composer)
    assert shard_bytes(out) == shard_bytes(clean)


def test_rerun_repairs_deleted_and_corrupt_shards(reference, tmp_path):
    _, _, ref_bytes = reference
    out = str(tmp_path)
    nmnist.generate_nmnist(out, workers=1, **GEN)
    deleted, corrupt = "train-00001-of-00003.tfrecord", "test-00000-of-00002.tfrecord"
    os.remove(os.path.join(out, deleted))
    with open(os.path.join(out, corrupt), "r+b") as f:
        f.seek(100)
        f.write(b"\xff\xff")
    with pytest.raises(metadata.DatasetError, match=f"{corrupt}: corrupt shard"):
        metadata.verify_shards(out, "test")
    with pytest.raises(metadata.DatasetError, match=f"{deleted}: shard missing"):
        metadata.verify_shards(out, "train")
    kept = {f: os.stat(os.path.join(out, f)).st_mtime_ns for f in ref_bytes
            if f not in (deleted, corrupt)}
    nmnist.generate_nmnist(out, workers=1, **GEN)
    assert shard_bytes(out) == ref_bytes
    assert {f: os.stat(os.path.join(out, f)).st_mtime_ns for f in kept} == kept


def test_other_parameters_need_overwrite(tmp_path):
    out = str(tmp_path)
    nmnist.generate_nmnist(out, workers=1, **GEN)
    with pytest.raises(metadata.DatasetError, match="dataset.json.*params.seed: 0 -> 1"):
        nmnist.generate_nmnist(out, workers=1, seed=1, **GEN)
    meta = nmnist.generate_nmnist(out, workers=1, seed=1, overwrite=True, **GEN)
    assert meta["params"]["seed"] == 1 and metadata.read_metadata(out)["params"]["seed"] == 1


def test_sidecar_errors_name_the_file(reference, tmp_path):
    with pytest.raises(metadata.DatasetError, match=f"{tmp_path}/dataset.json: not found"):
        metadata.read_metadata(str(tmp_path))
    meta = json.load(open(os.path.join(reference[0], metadata.METADATA_FILE)))
    meta["schema_version"] = 2
    (tmp_path / "dataset.json").write_text(json.dumps(meta))
    with pytest.raises(metadata.DatasetError, match="dataset.json: schema_version 2, .* version 1"):
        metadata.read_metadata(str(tmp_path))
    (tmp_path / "dataset.json").write_text("{not json")
    with pytest.raises(metadata.DatasetError, match="dataset.json: not valid JSON"):
        metadata.read_metadata(str(tmp_path))


def run_bin(*args):
    return subprocess.run([sys.executable, "-m", "needles_tf.bin.make_nmnist", *args],
                          capture_output=True, text=True, timeout=120)


def test_binary_generates_from_idx_files(tmp_path):
    labels = write_idx_set(str(tmp_path / "mnist"), gz=True)
    out = str(tmp_path / "ds")
    result = run_bin(f"--mnist=idx:{tmp_path / 'mnist'}", f"--output_dir={out}",
                     "--canvas_size=40", "--num_clutter=2", "--workers=2", "--noprogress")
    assert result.returncode == 0, result.stderr
    meta = metadata.read_metadata(out)
    threes = {"train": np.sum(labels["train"][5000:] == 3),
              "val": np.sum(labels["train"][:5000] == 3), "test": np.sum(labels["t10k"] == 3)}
    assert {s: meta["splits"][s]["count"] for s in metadata.SPLITS} == {
        "train": 2 * threes["train"], "val": 4 * threes["val"], "test": 4 * threes["test"]}
    assert meta["params"]["mnist"] == f"idx:{tmp_path / 'mnist'}"


@pytest.mark.parametrize("make_bad,expected", [
    (lambda d: os.remove(d / "train-images-idx3-ubyte"), "train-images-idx3-ubyte\\[.gz\\]: MNIST "
                                                         "IDX file not found"),
    (lambda d: (d / "t10k-images-idx3-ubyte").write_bytes(b"\0\0\x08\x03"), "t10k-images-idx3-"
                                                                            "ubyte: truncated"),
])
def test_binary_reports_bad_input_without_traceback(tmp_path, make_bad, expected):
    write_idx_set(str(tmp_path))
    make_bad(tmp_path)
    result = run_bin(f"--mnist=idx:{tmp_path}", f"--output_dir={tmp_path / 'ds'}")
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    assert re.search(expected, result.stderr), result.stderr
