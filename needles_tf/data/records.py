"""TFRecord schema (version 1), the dataset.json sidecar and the sharded, resumable writer.

Schema v1: one ``tf.train.Example`` per image with the features of design.md (``image/encoded``
PNG, ``image/height|width|channels``, ``label``, ``o2i``, ``object/bbox`` = ymin, xmin, ymax, xmax
with ymax/xmax exclusive (empty for negatives), optional ``object/mask`` PNG, ``clutter/count``,
``source/id``). Files are ``{split}-{i:05d}-of-{n:05d}.tfrecord``; ``dataset.json`` holds the
schema version, kind, every generation parameter, image size, counts and per-shard sha256.

Generators (nMNIST, nCAMELYON) write through one function::

    write_dataset(output_dir, kind, params, split_sizes, make_example,
                  image={"height": h, "width": w, "channels": c},  # h, w None if variable
                  num_shards=8,        # int (largest split; others proportional) or {split: n}
                  workers=2, overwrite=False, progress=True,
                  extra=None)          # more top-level sidecar keys
    -> metadata dict;  make_example: picklable, fn(split, index) -> (serialized bytes, label)

``make_example`` builds the serialized example (usually via ``encode_example``) for image
``index`` of ``split``; it must depend only on (its own state, split, index), which is what makes
the output byte-identical whatever the worker count. It runs in worker processes started with
the 'spawn' method (TensorFlow is not fork-safe), so it is pickled once per worker and must not
need TensorFlow: ``encode_example`` and ``encode_png`` here are pure Python/numpy/zlib. The main
process frames the records with ``tf.io.TFRecordWriter`` (hardware crc32c), writes each shard
to a temporary name, hashes it and renames it, then records it in ``dataset.partial.json``.
A re-run with the same parameters skips every shard whose sha256 matches (resume after a kill,
or repair of a deleted / corrupt shard); other parameters raise unless ``overwrite=True``.
"""

from __future__ import annotations

import glob
import hashlib
import json
import multiprocessing
import os
import re
import struct
import zlib
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from needles_tf import atomic

SCHEMA_VERSION = 1
SPLITS = ("train", "val", "test")
METADATA_FILE = "dataset.json"
PARTIAL_FILE = "dataset.partial.json"
# zlib level and strategy of our PNGs. On mostly-black nMNIST canvases run-length deflate is both
# faster and smaller than the default strategy (1024x1024, 400 clutter: 2.3 ms / 65 KiB vs
# 4.9 ms / 73 KiB at level 4); photographic images (nCAMELYON) compress better with
# zlib.Z_DEFAULT_STRATEGY.
PNG_COMPRESSION = 4
PNG_STRATEGY = zlib.Z_RLE
_SHARD_RE = re.compile(r"^(train|val|test)-\d{5}-of-\d{5}\.tfrecord(\.tmp-\d+)?$")


class DatasetError(ValueError):
    """A dataset directory that cannot be used; the message names the file and the problem."""


RecordsError = DatasetError  # the name main's first version used


# ------------------------------------------------------------------------------ encoding

def encode_png(image: np.ndarray, compression: int = PNG_COMPRESSION,
               strategy: int = PNG_STRATEGY) -> bytes:
    """PNG bytes of a uint8 (H, W), (H, W, 1) or (H, W, 3) image (zlib `strategy`, see above).

    Written with zlib directly, every row with PNG filter 0 ("none"): Pillow and tf.io.encode_png
    try the adaptive filters, which on mostly-black canvases compress no better and take about
    twice as long (1024x1024 nMNIST: 5 ms vs 9-14 ms per image at the default strategy).
    """
    image = np.asarray(image)
    if image.dtype != np.uint8:
        raise ValueError(f"encode_png: expected uint8 pixels, got {image.dtype}")
    if image.ndim == 2:
        image = image[:, :, None]
    height, width, channels = image.shape
    if channels not in (1, 3):
        raise ValueError(f"encode_png: expected 1 or 3 channels, got {channels}")
    rows = np.zeros((height, 1 + width * channels), np.uint8)  # column 0 = filter type 0
    rows[:, 1:] = image.reshape(height, width * channels)
    color_type = 0 if channels == 1 else 2
    header = struct.pack(">IIBBBBB", width, height, 8, color_type, 0, 0, 0)

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(
            ">I", zlib.crc32(tag + data))

    deflate = zlib.compressobj(compression, zlib.DEFLATED, 15, 8, strategy)
    idat = deflate.compress(rows.tobytes()) + deflate.flush()
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat)
            + chunk(b"IEND", b""))


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
    """Serialized schema-v1 tf.train.Example of one image (no TensorFlow needed)."""
    image = np.asarray(image)
    if image.ndim == 2:
        image = image[:, :, None]
    height, width, channels = image.shape
    if bbox is not None and len(bbox) not in (0, 4):
        raise ValueError(f"encode_example: bbox must hold 4 values, got {list(bbox)}")
    features = {
        "image/encoded": _bytes_feature([encode_png(image, strategy=png_strategy)]),
        "image/height": _int64_feature([height]),
        "image/width": _int64_feature([width]),
        "image/channels": _int64_feature([channels]),
        "label": _int64_feature([int(label)]),
        "o2i": _float_feature([float(o2i)]),
        "object/bbox": _int64_feature(list(bbox) if bbox is not None else []),
        "clutter/count": _int64_feature([int(clutter_count)]),
        "source/id": _bytes_feature([source_id.encode()]),
    }
    if mask is not None:
        features["object/mask"] = _bytes_feature([encode_png(np.asarray(mask, np.uint8))])
    return _example(features)


def parse_example(serialized):
    """Parses one serialized schema-v1 example into tensors (PNG left encoded; bbox [0] or [4])."""
    import tensorflow as tf

    spec = {
        "image/encoded": tf.io.FixedLenFeature([], tf.string),
        "image/height": tf.io.FixedLenFeature([], tf.int64),
        "image/width": tf.io.FixedLenFeature([], tf.int64),
        "image/channels": tf.io.FixedLenFeature([], tf.int64),
        "label": tf.io.FixedLenFeature([], tf.int64),
        "o2i": tf.io.FixedLenFeature([], tf.float32),
        "object/bbox": tf.io.VarLenFeature(tf.int64),
        "object/mask": tf.io.FixedLenFeature([], tf.string, default_value=""),
        "clutter/count": tf.io.FixedLenFeature([], tf.int64, default_value=0),
        "source/id": tf.io.FixedLenFeature([], tf.string, default_value=""),
    }
    parsed = tf.io.parse_single_example(serialized, spec)
    parsed["object/bbox"] = tf.sparse.to_dense(parsed["object/bbox"])
    return parsed


# ------------------------------------------------------------------------------ sidecar

def shard_name(split: str, i: int, n: int) -> str:
    return f"{split}-{i:05d}-of-{n:05d}.tfrecord"


def file_sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def _read_json(path: str) -> dict:
    try:
        with open(path) as f:
            obj = json.load(f)
    except OSError as e:
        raise DatasetError(f"{path}: cannot read dataset sidecar ({e.strerror}); expected the "
                           "dataset.json written by needles-make-nmnist / -ncamelyon") from e
    except json.JSONDecodeError as e:
        raise DatasetError(f"{path}: not valid JSON ({e})") from e
    if not isinstance(obj, dict):
        raise DatasetError(f"{path}: expected a JSON object")
    version = obj.get("schema_version")
    if version != SCHEMA_VERSION:
        raise DatasetError(f"{path}: schema_version {version!r}, this needles_tf reads version "
                           f"{SCHEMA_VERSION}; regenerate the dataset")
    return obj


def read_metadata(data_dir: str) -> dict:
    """The validated dataset.json of a dataset directory (DatasetError naming the file if bad)."""
    path = os.path.join(data_dir, METADATA_FILE)
    if not os.path.isfile(path):
        raise DatasetError(f"{path}: not found; is {data_dir!r} a dataset directory written by "
                           "needles-make-nmnist / needles-make-ncamelyon?")
    meta = _read_json(path)
    for key in ("kind", "params", "image", "splits"):
        if key not in meta:
            raise DatasetError(f"{path}: missing key {key!r}")
    for split, info in meta["splits"].items():
        if not {"count", "positives", "negatives", "shards"} <= set(info):
            raise DatasetError(f"{path}: split {split!r} lacks count/positives/negatives/shards")
    return meta


def split_metadata(meta: Mapping, split: str, data_dir: str = "") -> dict:
    if split not in meta["splits"]:
        raise DatasetError(f"{os.path.join(data_dir, METADATA_FILE)}: no split {split!r} "
                           f"(has {sorted(meta['splits'])})")
    return meta["splits"][split]


def verify_shards(data_dir: str, split: str, meta: Mapping | None = None) -> list[str]:
    """Checks every shard of a split exists with the recorded sha256; returns their paths."""
    return shard_paths(data_dir, split, verify=True, meta=meta)


def shard_paths(data_dir: str, split: str, verify: bool = False,
                meta: Mapping | None = None) -> list[str]:
    """Paths of a split's shards; with `verify`, each checked against its recorded sha256."""
    meta = meta if meta is not None else read_metadata(data_dir)
    paths = []
    for shard in split_metadata(meta, split, data_dir)["shards"]:
        path = os.path.join(data_dir, shard["file"])
        if not os.path.isfile(path):
            raise DatasetError(f"{path}: shard missing (listed in {METADATA_FILE}); re-run the "
                               "generator with the same flags to repair it")
        if verify and file_sha256(path) != shard["sha256"]:
            raise DatasetError(f"{path}: corrupt shard (sha256 differs from {METADATA_FILE}); "
                               "re-run the generator with the same flags to repair it")
        paths.append(path)
    return paths


# ------------------------------------------------------------------------------ writer

def shard_counts(split_sizes: Mapping[str, int],
                 num_shards: int | Mapping[str, int]) -> dict[str, int]:
    """Shards per split: `num_shards` for the largest split, proportionally fewer (>= 1) else;
    a mapping gives each split's count (capped at its size, at least 1)."""
    if isinstance(num_shards, Mapping):
        return {s: max(1, min(n, int(num_shards[s]))) for s, n in split_sizes.items()}
    if num_shards < 1:
        raise ValueError(f"num_shards must be >= 1, got {num_shards}")
    largest = max(max(split_sizes.values()), 1)
    return {s: max(1, min(n, -(-num_shards * n // largest))) for s, n in split_sizes.items()}


def _layout(split_sizes: Mapping[str, int],
            num_shards: int | Mapping[str, int]) -> list[tuple[str, str, int, int]]:
    """(split, file, start, stop) of every shard: contiguous ranges of image indices."""
    out = []
    for split, n_shards in shard_counts(split_sizes, num_shards).items():
        size = split_sizes[split]
        for i in range(n_shards):
            out.append((split, shard_name(split, i, n_shards),
                        i * size // n_shards, (i + 1) * size // n_shards))
    return out


_worker_make_example: Callable | None = None


def _init_worker(make_example: Callable) -> None:
    global _worker_make_example
    _worker_make_example = make_example


def _run_chunk(task: tuple[str, int, int]) -> list[tuple[bytes, int]]:
    split, start, stop = task
    return [_worker_make_example(split, i) for i in range(start, stop)]


def _remove_dataset_files(output_dir: str) -> None:
    for path in glob.glob(os.path.join(output_dir, "*")):
        name = os.path.basename(path)
        if _SHARD_RE.match(name) or name.startswith((METADATA_FILE, PARTIAL_FILE)):
            os.remove(path)


def write_dataset(output_dir: str, kind: str, params: Mapping[str, Any],
                  split_sizes: Mapping[str, int],
                  make_example: Callable[[str, int], tuple[bytes, int]], *,
                  image: Mapping[str, int | None] | None = None,
                  num_shards: int | Mapping[str, int] = 8, workers: int = 1,
                  overwrite: bool = False, progress: bool = True,
                  extra: Mapping[str, Any] | None = None, chunk_size: int = 16) -> dict:
    """Writes (or resumes / repairs) a sharded schema-v1 dataset; returns its metadata.

    See the module docstring. `params` must be JSON-serialisable; together with kind, image and
    the shard layout it identifies the dataset: a directory holding another one raises
    DatasetError unless `overwrite`, which deletes the old shards and sidecars first.
    """
    import tensorflow as tf
    from tqdm.auto import tqdm

    extra = dict(extra or {})
    image = image if image is not None else extra.pop("image", None)
    if image is None or not {"height", "width", "channels"} <= set(image):
        raise ValueError("write_dataset: image={'height', 'width', 'channels'} is required")
    os.makedirs(output_dir, exist_ok=True)
    layout = _layout(split_sizes, num_shards)
    identity = json.loads(json.dumps({
        "schema_version": SCHEMA_VERSION, "kind": kind, "params": dict(params),
        "image": dict(image), "split_sizes": dict(split_sizes),
        "shard_files": [f for _, f, _, _ in layout]}, sort_keys=True))
    if overwrite:
        _remove_dataset_files(output_dir)

    # Shards already written by an earlier (possibly interrupted) run with the same identity.
    done: dict[str, dict] = {}
    for name in (METADATA_FILE, PARTIAL_FILE):
        path = os.path.join(output_dir, name)
        if not os.path.exists(path):
            continue
        previous = _read_json(path)
        if previous.get("identity") != identity:
            raise DatasetError(
                f"{path}: {output_dir!r} holds a dataset with other parameters "
                f"({_describe_difference(previous.get('identity'), identity)}); choose another "
                "output directory or overwrite it (--overwrite)")
        for info in previous.get("splits", {}).values():
            done.update({s["file"]: s for s in info["shards"]})
        break
    finished = {}
    for split, file, start, stop in layout:
        entry = done.get(file)
        path = os.path.join(output_dir, file)
        if (entry and entry["count"] == stop - start and os.path.isfile(path)
                and file_sha256(path) == entry["sha256"]):
            finished[file] = entry
    pending = [s for s in layout if s[1] not in finished]
    if pending and os.path.exists(os.path.join(output_dir, METADATA_FILE)):
        os.remove(os.path.join(output_dir, METADATA_FILE))  # no longer complete

    def metadata(complete: bool) -> dict:
        splits = {}
        for split in split_sizes:
            shards = [finished[f] for s, f, _, _ in layout if s == split and f in finished]
            positives = sum(s["positives"] for s in shards)
            count = sum(s["count"] for s in shards)
            splits[split] = {"count": count, "positives": positives,
                             "negatives": count - positives, "shards": shards}
        return {**extra, "schema_version": SCHEMA_VERSION, "kind": kind,
                "params": identity["params"],
                "image": identity["image"], "splits": splits, "identity": identity,
                "complete": complete}

    tasks = [(split, lo, min(lo + chunk_size, stop))
             for split, _, start, stop in pending for lo in range(start, stop, chunk_size)]
    bar = tqdm(total=sum(stop - start for _, _, start, stop in pending), unit="img",
               desc=f"writing {os.path.basename(os.path.normpath(output_dir))}",
               disable=not progress or not pending)
    pool = None
    try:
        if workers > 1 and len(tasks) > 1:
            pool = multiprocessing.get_context("spawn").Pool(
                workers, initializer=_init_worker, initargs=(make_example,))
            results = pool.imap(_run_chunk, tasks)
        else:
            _init_worker(make_example)
            results = map(_run_chunk, tasks)
        for split, file, start, stop in pending:
            path = os.path.join(output_dir, file)
            tmp = f"{path}.tmp-{os.getpid()}"
            positives = 0
            try:
                with tf.io.TFRecordWriter(tmp) as writer:
                    written = 0
                    while written < stop - start:
                        chunk = next(results)
                        for serialized, label in chunk:
                            writer.write(serialized)
                            positives += int(label == 1)
                        written += len(chunk)
                        bar.update(len(chunk))
                os.replace(tmp, path)
            finally:
                if os.path.exists(tmp):
                    os.remove(tmp)
            finished[file] = {"file": file, "count": stop - start, "positives": positives,
                              "sha256": file_sha256(path)}
            atomic.write_json(os.path.join(output_dir, PARTIAL_FILE), metadata(False))
    finally:
        bar.close()
        if pool is not None:
            pool.terminate()
            pool.join()
    meta = metadata(True)
    atomic.write_json(os.path.join(output_dir, METADATA_FILE), meta)
    if os.path.exists(os.path.join(output_dir, PARTIAL_FILE)):
        os.remove(os.path.join(output_dir, PARTIAL_FILE))
    return meta


def _describe_difference(old: Any, new: Mapping) -> str:
    if not isinstance(old, Mapping):
        return "no parameters recorded"
    keys = sorted({*old, *new})
    diffs = [k for k in keys if old.get(k) != new.get(k)]
    if diffs == ["params"]:
        p_old, p_new = old["params"], new["params"]
        diffs = [f"params.{k}: {p_old.get(k)!r} -> {p_new.get(k)!r}"
                 for k in sorted({*p_old, *p_new}) if p_old.get(k) != p_new.get(k)]
    return "; ".join(diffs) or "unknown difference"
