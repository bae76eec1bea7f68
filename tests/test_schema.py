"""The TFRecord schema: our hand-written encoder against TensorFlow's own protos, the decoder."""

import subprocess
import sys
import zlib

import numpy as np
import pytest
import tensorflow as tf

from needles_tf.data import schema


def _tf_example(image_png: bytes, height, width, channels, label, o2i, bbox, clutter, source_id,
                mask_png=None) -> bytes:
    """The same example built with tf.train protos, serialised deterministically."""
    def ints(values):
        return tf.train.Feature(int64_list=tf.train.Int64List(value=values))

    feature = {
        schema.IMAGE: tf.train.Feature(bytes_list=tf.train.BytesList(value=[image_png])),
        schema.HEIGHT: ints([height]), schema.WIDTH: ints([width]),
        schema.CHANNELS: ints([channels]), schema.LABEL: ints([label]),
        schema.O2I: tf.train.Feature(float_list=tf.train.FloatList(value=[o2i])),
        schema.BBOX: ints(bbox), schema.CLUTTER_COUNT: ints([clutter]),
        schema.SOURCE_ID: tf.train.Feature(bytes_list=tf.train.BytesList(
            value=[source_id.encode()])),
    }
    if mask_png is not None:
        feature[schema.MASK] = tf.train.Feature(bytes_list=tf.train.BytesList(value=[mask_png]))
    example = tf.train.Example(features=tf.train.Features(feature=feature))
    return example.SerializeToString(deterministic=True)


@pytest.mark.parametrize("case", ["positive", "negative", "rgb_with_mask", "large_values"])
def test_encoder_bytes_equal_tensorflow_serialisation(case):
    rng = np.random.default_rng(0)
    channels = 3 if case == "rgb_with_mask" else 1
    image = rng.integers(0, 256, (20, 30, channels), dtype=np.uint8)
    mask = (rng.random((20, 30)) < 0.2).astype(np.uint8) * 255 if channels == 3 else None
    bbox = [] if case == "negative" else [2, 3, 12, 25]
    label = 0 if case == "negative" else 1
    clutter = 2 ** 40 if case == "large_values" else 3  # multi-byte varints
    o2i = 0.0 if case == "negative" else 0.191
    source = "slide_7/region_2/crop_0 x=5 y=6" if channels == 3 else "train[12] needle=embedded[3]"
    ours = schema.encode_example(image, label, o2i, bbox or None, source, clutter, mask=mask)
    png = schema.encode_png(image)
    theirs = _tf_example(png, 20, 30, channels, label, o2i, bbox, clutter, source,
                         schema.encode_png(mask) if mask is not None else None)
    assert ours == theirs


def test_decoder_round_trip_and_key_subsets():
    image = np.arange(48, dtype=np.uint8).reshape(6, 8)
    serialized = schema.encode_example(image, 1, 0.5, [1, 2, 5, 7], "x", 4)
    decoded = schema.Decoder().decode(tf.constant(serialized))
    assert np.array_equal(tf.io.decode_png(decoded[schema.IMAGE]).numpy()[..., 0], image)
    assert decoded[schema.BBOX].numpy().tolist() == [1, 2, 5, 7]
    assert int(decoded[schema.CLUTTER_COUNT]) == 4 and decoded[schema.MASK].numpy() == b""
    labels = schema.Decoder((schema.LABEL,)).decode_batch(tf.constant([serialized] * 3))
    assert set(labels) == {schema.LABEL} and labels[schema.LABEL].numpy().tolist() == [1, 1, 1]
    with pytest.raises(ValueError, match="unknown feature keys"):
        schema.Decoder(("label", "image/pixels"))


def test_generation_side_imports_no_tensorflow():
    code = ("import sys; import needles_tf.generation.nmnist, needles_tf.generation.ncamelyon, "
            "needles_tf.generation.writer, needles_tf.data.schema, needles_tf.data.metadata; "
            "print('tensorflow' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


@pytest.mark.parametrize("strategy", [schema.PNG_STRATEGY, zlib.Z_DEFAULT_STRATEGY])
def test_png_rows_handed_to_zlib_in_bands_give_the_same_bytes(monkeypatch, strategy):
    """Large canvases are encoded a band of rows at a time: the PNG is that of the whole."""
    rng = np.random.default_rng(1)
    for image in (rng.integers(0, 256, (37, 23, 3), dtype=np.uint8),
                  np.pad(rng.integers(0, 256, (20, 20), dtype=np.uint8), 50)):
        whole = schema.encode_png(image, strategy=strategy)  # one band
        monkeypatch.setattr(schema, "PNG_BAND_BYTES", 100)  # a row or a few per band
        banded = schema.encode_png(image, strategy=strategy)
        monkeypatch.undo()
        assert banded == whole
        decoded = tf.io.decode_png(banded).numpy()
        np.testing.assert_array_equal(decoded.reshape(image.shape), image)
