"""The TFRecord schema (version 1): feature keys, the encoder and the tf.Example decoder.

One ``tf.train.Example`` per image:

    image/encoded   PNG, uint8, 1 (nMNIST) or 3 (nCAMELYON) channels
    image/height, image/width, image/channels   int64
    label           int64, 1 = a needle is present
    o2i             float, object-to-image ratio of the needle (0 for negatives)
    object/bbox     int64 [4] ymin, xmin, ymax, xmax (max exclusive); empty for negatives
    object/mask     PNG of the object mask (0 / 255), nCAMELYON only
    clutter/count   int64, clutter objects in the image
    source/id       bytes, where the image came from

The encoder is written by hand, without TensorFlow: generator worker processes use it, and
importing TensorFlow's protos would load all of TensorFlow (3.5 s) into every one of them. Its
bytes equal TensorFlow's deterministic serialisation of the same example (tests/test_schema.py).
The decoder needs TensorFlow and imports it when it is built.
"""

from __future__ import annotations

import struct
import zlib
from typing import Mapping, Sequence

import numpy as np

SCHEMA_VERSION = 1

IMAGE = "image/encoded"
HEIGHT = "image/height"
WIDTH = "image/width"
CHANNELS = "image/channels"
LABEL = "label"
O2I = "o2i"
BBOX = "object/bbox"
MASK = "object/mask"
CLUTTER_COUNT = "clutter/count"
SOURCE_ID = "source/id"

# zlib level and strategy of our PNGs. On mostly-black nMNIST canvases run-length deflate is both
# faster and smaller than the default strategy (1024x1024, 400 clutter: 2.3 ms / 65 KiB vs
# 4.9 ms / 73 KiB at level 4); photographic images (nCAMELYON) compress better with
# zlib.Z_DEFAULT_STRATEGY.
PNG_COMPRESSION = 4
PNG_STRATEGY = zlib.Z_RLE
PNG_BAND_BYTES = 1 << 22  # rows handed to zlib at once


def encode_png(image: np.ndarray, compression: int = PNG_COMPRESSION,
               strategy: int = PNG_STRATEGY) -> bytes:
    """PNG bytes of a uint8 image, every row with PNG filter 0 ("none").

    Pillow and tf.io.encode_png try the adaptive filters, which on mostly-black canvases compress
    no better and take about twice as long (1024x1024 nMNIST: 5 ms vs 9-14 ms per image at the
    default strategy).

    Args:
        image: uint8 [H, W], [H, W, 1] or [H, W, 3].
        compression: zlib level.
        strategy: zlib strategy (see PNG_STRATEGY).

    Returns:
        The PNG file's bytes.

    Raises:
        ValueError: not uint8, or not 1 or 3 channels.
    """
    image = np.asarray(image)
    if image.dtype != np.uint8:
        raise ValueError(f"encode_png: expected uint8 pixels, got {image.dtype}")
    if image.ndim == 2:
        image = image[:, :, None]
    height, width, channels = image.shape
    if channels not in (1, 3):
        raise ValueError(f"encode_png: expected 1 or 3 channels, got {channels}")
    row_bytes = 1 + width * channels
    # Filtered rows go to zlib a band at a time, so a large canvas (8192 x 8192 and beyond) is
    # never copied whole: the peak is the image, one band and the compressed stream. zlib's
    # output does not depend on how its input is split (tests/test_schema.py).
    band = np.zeros((max(1, min(height, PNG_BAND_BYTES // row_bytes)), row_bytes), np.uint8)
    flat = image.reshape(height, width * channels)
    deflate = zlib.compressobj(compression, zlib.DEFLATED, 15, 8, strategy)
    pieces = []
    for top in range(0, height, len(band)):
        rows = band[:min(len(band), height - top)]
        rows[:, 1:] = flat[top:top + len(rows)]  # column 0 stays 0: filter type "none"
        pieces.append(deflate.compress(rows))
    pieces.append(deflate.flush())
    idat = b"".join(pieces)
    del pieces
    header = struct.pack(">IIBBBBB", width, height, 8, 0 if channels == 1 else 2, 0, 0, 0)
    return b"".join([b"\x89PNG\r\n\x1a\n", *_png_chunk(b"IHDR", header),
                     *_png_chunk(b"IDAT", idat), *_png_chunk(b"IEND", b"")])


def _png_chunk(tag: bytes, data: bytes) -> tuple[bytes, ...]:
    """The pieces of a PNG chunk: length, tag, data, CRC of tag and data."""
    return (struct.pack(">I", len(data)), tag, data,
            struct.pack(">I", zlib.crc32(data, zlib.crc32(tag))))


def _varint(value: int) -> bytes:
    value &= (1 << 64) - 1  # two's complement for negative int64, as protobuf does
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
    """A length-delimited protobuf field (wire type 2)."""
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def _bytes_feature(values: Sequence[bytes]) -> bytes:
    return _field(1, b"".join(_field(1, v) for v in values))  # Feature.bytes_list


def _float_feature(values: Sequence[float]) -> bytes:
    packed = struct.pack(f"<{len(values)}f", *values)
    return _field(2, _field(1, packed) if values else b"")  # Feature.float_list, packed


def _int64_feature(values: Sequence[int]) -> bytes:
    packed = b"".join(_varint(int(v)) for v in values)
    return _field(3, _field(1, packed) if values else b"")  # Feature.int64_list, packed


def _example(features: Mapping[str, bytes]) -> bytes:
    """Serialized tf.train.Example; map entries in sorted key order so bytes are deterministic."""
    entries = b"".join(_field(1, _field(1, k.encode()) + _field(2, v))
                       for k, v in sorted(features.items()))
    return _field(1, entries)


def encode_example(image: np.ndarray, label: int, o2i: float, bbox: Sequence[int] | None,
                   source_id: str, clutter_count: int = 0,
                   mask: np.ndarray | None = None,
                   png_strategy: int = PNG_STRATEGY) -> bytes:
    """The serialized schema-v1 tf.train.Example of one image (no TensorFlow needed).

    Args:
        image: uint8 [H, W] or [H, W, C].
        label: 1 if a needle is present, else 0.
        o2i: the needle's object-to-image ratio (0 for negatives).
        bbox: (ymin, xmin, ymax, xmax), max exclusive, or None / () for negatives.
        source_id: where the image came from.
        clutter_count: clutter objects in the image.
        mask: optional uint8 object mask [H, W] (0 / 255).
        png_strategy: zlib strategy of the image PNG.

    Returns:
        The serialized example.

    Raises:
        ValueError: a bbox without 4 values, or an image encode_png refuses.
    """
    image = np.asarray(image)
    if image.ndim == 2:
        image = image[:, :, None]
    height, width, channels = image.shape
    if bbox is not None and len(bbox) not in (0, 4):
        raise ValueError(f"encode_example: bbox must hold 4 values, got {list(bbox)}")
    features = {
        IMAGE: _bytes_feature([encode_png(image, strategy=png_strategy)]),
        HEIGHT: _int64_feature([height]),
        WIDTH: _int64_feature([width]),
        CHANNELS: _int64_feature([channels]),
        LABEL: _int64_feature([int(label)]),
        O2I: _float_feature([float(o2i)]),
        BBOX: _int64_feature(list(bbox) if bbox is not None else []),
        CLUTTER_COUNT: _int64_feature([int(clutter_count)]),
        SOURCE_ID: _bytes_feature([source_id.encode()]),
    }
    if mask is not None:
        features[MASK] = _bytes_feature([encode_png(np.asarray(mask, np.uint8))])
    return _example(features)


class Decoder:
    """Decodes serialized schema-v1 examples into a dict of tensors keyed by the feature keys.

    PNGs stay encoded (the parser decodes what it needs); `object/bbox` is dense, [0] or [4].
    With `keys`, only those features are parsed (e.g. (LABEL,) to read labels cheaply).
    """

    def __init__(self, keys: Sequence[str] | None = None):
        import tensorflow as tf

        spec = {
            IMAGE: tf.io.FixedLenFeature([], tf.string),
            HEIGHT: tf.io.FixedLenFeature([], tf.int64),
            WIDTH: tf.io.FixedLenFeature([], tf.int64),
            CHANNELS: tf.io.FixedLenFeature([], tf.int64),
            LABEL: tf.io.FixedLenFeature([], tf.int64),
            O2I: tf.io.FixedLenFeature([], tf.float32),
            BBOX: tf.io.VarLenFeature(tf.int64),
            MASK: tf.io.FixedLenFeature([], tf.string, default_value=""),
            CLUTTER_COUNT: tf.io.FixedLenFeature([], tf.int64, default_value=0),
            SOURCE_ID: tf.io.FixedLenFeature([], tf.string, default_value=""),
        }
        unknown = set(keys or ()) - set(spec)
        if unknown:
            raise ValueError(f"Decoder: unknown feature keys {sorted(unknown)}")
        self._spec = {k: spec[k] for k in keys} if keys is not None else spec
        self._tf = tf

    def decode(self, serialized):
        """One serialized example (scalar string tensor) -> {key: tensor}."""
        parsed = self._tf.io.parse_single_example(serialized, self._spec)
        return self._dense(parsed)

    def decode_batch(self, serialized):
        """A batch of serialized examples [N] -> {key: tensor [N, ...]}."""
        parsed = self._tf.io.parse_example(serialized, self._spec)
        return self._dense(parsed)

    def _dense(self, parsed):
        if BBOX in parsed:
            parsed[BBOX] = self._tf.sparse.to_dense(parsed[BBOX])
        return parsed
