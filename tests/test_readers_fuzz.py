"""Property-based tests of the readers that take outside files (issue 11): whatever the bytes,
each gives a result or the project's own error naming the file, never another exception.

Examples per reader are few (the suite runs on 2 cores); each starts from a valid file and lets
hypothesis truncate it, flip its bytes or replace its fields, which reaches deeper than random
bytes alone.
"""

import gzip
import json
import os
import struct

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from needles_tf.data import metadata
from needles_tf.generation.camelyon import SlideError, parse_asap_xml
from needles_tf.generation.mnist import MnistSourceError, read_idx
from needles_tf.serving.images import ImageError, read_image

EXAMPLES = settings(max_examples=60, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.function_scoped_fixture])


def mutated(valid: bytes) -> st.SearchStrategy[bytes]:
    """Random bytes, a truncation of `valid`, or `valid` with bytes overwritten."""
    def overwrite(edits):
        data = bytearray(valid)
        for position, value in edits:
            data[position % len(data)] = value
        return bytes(data)

    return st.one_of(
        st.binary(max_size=300),
        st.integers(0, len(valid)).map(lambda n: valid[:n]),
        st.lists(st.tuples(st.integers(0, 10 ** 6), st.integers(0, 255)), min_size=1,
                 max_size=8).map(overwrite))


def _write(tmp_path, name: str, data: bytes) -> str:
    path = tmp_path / name
    path.write_bytes(data)
    return str(path)


VALID_IDX = struct.pack(">IIII", 0x0803, 2, 28, 28) + bytes(range(256)) * 6 + bytes(32)


@EXAMPLES
@given(data=mutated(VALID_IDX), zipped=st.booleans())
def test_mnist_idx_reader(tmp_path, data, zipped):
    path = _write(tmp_path, "images.idx3-ubyte" + (".gz" if zipped else ""),
                  gzip.compress(data) if zipped else data)
    try:
        images = read_idx(path, "images")
    except MnistSourceError as e:
        assert path in str(e)
    else:
        assert images.dtype == np.uint8 and images.shape[1:] == (28, 28)


VALID_XML = b"""<?xml version="1.0"?>
<ASAP_Annotations><Annotations>
<Annotation Name="A" PartOfGroup="metastases"><Coordinates>
<Coordinate Order="0" X="10.5" Y="20"/><Coordinate Order="1" X="40" Y="20"/>
<Coordinate Order="2" X="40" Y="60"/></Coordinates></Annotation>
</Annotations></ASAP_Annotations>"""


@EXAMPLES
@given(data=mutated(VALID_XML), value=st.text(max_size=12))
def test_asap_xml_reader(tmp_path, data, value):
    # also a well-formed file whose first X holds any text
    for i, content in enumerate((data, VALID_XML.replace(b'"10.5"', json.dumps(value).encode()))):
        path = _write(tmp_path, f"slide_{i}.xml", content)
        try:
            annotations = parse_asap_xml(path)
        except SlideError as e:
            assert path in str(e)
        else:
            assert all(np.isfinite(polygon.points).all() and len(polygon.points) >= 3
                       for polygon in annotations.lesions)


JSON = st.recursive(st.none() | st.booleans() | st.integers(-3, 10 ** 6) | st.floats()
                    | st.text(max_size=5),
                    lambda inner: st.lists(inner, max_size=3)
                    | st.dictionaries(st.text(max_size=8), inner, max_size=3), max_leaves=8)
SPLIT = {"count": 4, "positives": 2, "negatives": 2,
         "shards": [{"file": "train-00000-of-00001.tfrecord", "count": 4, "positives": 2,
                     "sha256": "0" * 64}]}
VALID_META = {"schema_version": metadata.SCHEMA_VERSION, "kind": "nmnist", "params": {},
              "image": {"height": 64, "width": 64, "channels": 1}, "complete": True,
              "splits": {"train": SPLIT}}


def _replace(tree, path, value):
    """`tree` with the value at `path` (a list of keys into nested dicts / lists) replaced."""
    if not path or not isinstance(tree, (dict, list)) or not tree:
        return value
    key = path[0] % len(tree)
    if isinstance(tree, dict):
        key = list(tree)[key]
        return {**tree, key: _replace(tree[key], path[1:], value)}
    return [_replace(v, path[1:], value) if i == key else v for i, v in enumerate(tree)]


@EXAMPLES
@given(path=st.lists(st.integers(0, 9), max_size=5), value=JSON,
       raw=mutated(json.dumps(VALID_META).encode()))
def test_dataset_json_reader(tmp_path, path, value, raw):
    for content in (json.dumps(_replace(VALID_META, path, value)).encode(), raw):
        _write(tmp_path, metadata.METADATA_FILE, content)
        try:
            meta = metadata.read_metadata(str(tmp_path))
        except metadata.DatasetError as e:
            assert str(tmp_path) in str(e)
        else:
            assert isinstance(meta["splits"], dict)


def _valid_image_bytes(suffix: str) -> bytes:
    import io

    from PIL import Image
    pixels = (np.arange(64, dtype=np.uint8).reshape(8, 8) * 4)
    buffer = io.BytesIO()
    if suffix == ".npy":
        np.save(buffer, pixels)
    elif suffix == ".tif":
        import tifffile
        tifffile.imwrite(buffer, pixels)
    else:
        Image.fromarray(pixels).save(buffer, format=suffix[1:])
    return buffer.getvalue()


@pytest.mark.parametrize("suffix", [".png", ".tif", ".npy"])
def test_predict_image_reader(tmp_path, suffix):
    @EXAMPLES
    @given(data=mutated(_valid_image_bytes(suffix)))
    def check(data):
        path = _write(tmp_path, "image" + suffix, data)
        try:
            image = read_image(path)
        except ImageError as e:
            assert path in str(e)
        else:
            assert image.ndim == 3 and image.shape[-1] in (1, 3) and image.dtype == np.float32
            assert 0 <= image.min() and image.max() <= 1

    check()
    assert os.path.exists(tmp_path / f"image{suffix}")
