"""The dataset directory contract: dataset.json, shard names and shard checks (no TensorFlow).

A dataset directory holds ``{split}-{i:05d}-of-{n:05d}.tfrecord`` shards (schema.py) and
``dataset.json``: the schema version, kind, every generation parameter, image size, and per
split the counts and each shard's file, count, positives and sha256. Generators write it last
(``dataset.partial.json`` while they run), so its presence means the dataset is complete.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from typing import Mapping

from needles_tf.data.schema import SCHEMA_VERSION

SPLITS = ("train", "val", "test")
METADATA_FILE = "dataset.json"
PARTIAL_FILE = "dataset.partial.json"
SHARD_RE = re.compile(r"^(train|val|test)-\d{5}-of-\d{5}\.tfrecord(\.tmp-\d+)?$")


class DatasetError(ValueError):
    """A dataset directory that cannot be used; the message names the file and the problem."""


def shard_name(split: str, i: int, n: int) -> str:
    return f"{split}-{i:05d}-of-{n:05d}.tfrecord"


def file_sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def read_json(path: str) -> dict:
    """A dataset sidecar (dataset.json or dataset.partial.json), checked for its schema version."""
    try:
        with open(path) as f:
            obj = json.load(f)
    except OSError as e:
        raise DatasetError(f"{path}: cannot read dataset sidecar ({e.strerror}); expected the "
                           "dataset.json written by needles-make-nmnist / -ncamelyon") from e
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
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
        if os.path.isfile(os.path.join(data_dir, PARTIAL_FILE)):
            raise DatasetError(f"{data_dir}: incomplete dataset (its generation was interrupted: "
                               f"{PARTIAL_FILE} but no {METADATA_FILE}); re-run the generator "
                               "with the same flags to finish it")
        raise DatasetError(f"{path}: not found; is {data_dir!r} a dataset directory written by "
                           "needles-make-nmnist / needles-make-ncamelyon?")
    meta = read_json(path)
    for key, kind in (("kind", str), ("params", dict), ("image", dict), ("splits", dict)):
        if not isinstance(meta.get(key), kind):
            raise DatasetError(f"{path}: {key!r} missing or not a JSON {_JSON_NAMES[kind]}")
    if meta.get("complete") is False:
        raise DatasetError(f"{path}: marked incomplete (complete: false); re-run the generator "
                           "with the same flags to finish it")
    if not all(_is_count(meta["image"].get(k)) and meta["image"][k] > 0
               for k in ("height", "width", "channels")):
        raise DatasetError(f"{path}: 'image' needs positive integer height, width and channels; "
                           f"got {meta['image']}")
    for split, info in meta["splits"].items():
        if not isinstance(info, dict) or \
                not {"count", "positives", "negatives", "shards"} <= set(info):
            raise DatasetError(f"{path}: split {split!r} lacks count/positives/negatives/shards")
        _check_counts(path, split, info)
    return meta


_JSON_NAMES = {str: "string", dict: "object"}


def _is_count(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _check_counts(path: str, split: str, info: Mapping) -> None:
    """A split's counts must add up: its shards' counts and positives, positives + negatives."""
    shards = info["shards"]
    if not isinstance(shards, list) or not all(
            isinstance(s, dict) and isinstance(s.get("file"), str) and _is_count(s.get("count"))
            and _is_count(s.get("positives")) for s in shards):
        raise DatasetError(f"{path}: split {split!r} needs a list of shard entries "
                           "{file, count, positives, sha256} with counts >= 0")
    if not all(_is_count(info[k]) for k in ("count", "positives", "negatives")):
        raise DatasetError(f"{path}: split {split!r}: count, positives and negatives must be "
                           "integers >= 0")
    shard_count = sum(s["count"] for s in shards)
    shard_positives = sum(s["positives"] for s in shards)
    if (info["count"], info["positives"]) != (shard_count, shard_positives) or \
            info["positives"] + info["negatives"] != info["count"]:
        raise DatasetError(
            f"{path}: split {split!r} is inconsistent (count {info['count']}, positives "
            f"{info['positives']}, negatives {info['negatives']}; its shards hold {shard_count} "
            f"images, {shard_positives} positive); re-run the generator with --overwrite")


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
