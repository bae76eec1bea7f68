"""The sharded, resumable dataset writer shared by the generators.

Generators (nMNIST, nCAMELYON) write through one function::

    write_dataset(output_dir, kind, params, split_sizes, make_example,
                  image={"height": h, "width": w, "channels": c},  # h, w None if variable
                  num_shards=8,        # int (largest split; others proportional) or {split: n}
                  workers=2, overwrite=False, progress=True,
                  extra=None)          # more top-level sidecar keys
    -> metadata dict;  make_example: picklable, fn(split, index) -> (serialized bytes, label)

``make_example`` builds the serialized example (usually via ``schema.encode_example``) for image
``index`` of ``split``; it must depend only on (its own state, split, index), which is what makes
the output byte-identical whatever the worker count. It runs in worker processes
(``workers.map_in_processes``) and must not need TensorFlow. The main process frames the records
with ``tf.io.TFRecordWriter`` (hardware crc32c; the one place generation imports TensorFlow),
writes each shard to a temporary name, hashes it and renames it, then records it in
``dataset.partial.json``. A re-run with the same parameters skips every shard whose sha256
matches (resume after a kill, or repair of a deleted / corrupt shard); other parameters raise
unless ``overwrite=True``.
"""

from __future__ import annotations

import glob
import json
import os
from concurrent.futures.process import BrokenProcessPool
from typing import Any, Callable, Iterator, Mapping

from needles_tf import atomic
from needles_tf.data.metadata import (
    METADATA_FILE,
    PARTIAL_FILE,
    SHARD_RE,
    DatasetError,
    file_sha256,
    read_json,
    shard_name,
)
from needles_tf.data.schema import SCHEMA_VERSION
from needles_tf.generation.workers import map_in_processes, worker_died


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
        if SHARD_RE.match(name) or name.startswith((METADATA_FILE, PARTIAL_FILE)):
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
    atomic.remove_stale_temporaries(output_dir)  # shards of a killed run, never renamed

    # Shards already written by an earlier (possibly interrupted) run with the same identity.
    done: dict[str, dict] = {}
    for name in (METADATA_FILE, PARTIAL_FILE):
        path = os.path.join(output_dir, name)
        if not os.path.exists(path):
            continue
        previous = read_json(path)
        if previous.get("identity") != identity:
            raise DatasetError(
                f"{path}: {output_dir!r} holds a dataset with other parameters "
                f"({_describe_difference(previous.get('identity'), identity)}); choose another "
                "output directory or overwrite it (--overwrite)")
        for info in previous.get("splits", {}).values():
            done.update({s["file"]: s for s in info["shards"]})
        break
    finished = {}
    for _, file, start, stop in layout:
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
    results = map_in_processes(_run_chunk, tasks, workers if len(tasks) > 1 else 1,
                               initializer=_init_worker, initargs=(make_example,))
    try:
        for _, file, start, stop in pending:
            path = os.path.join(output_dir, file)
            positives = 0
            with atomic.atomic_path(path) as tmp, tf.io.TFRecordWriter(tmp) as writer:
                written = 0
                while written < stop - start:
                    chunk = _next_chunk(results, output_dir, file)
                    for serialized, label in chunk:
                        writer.write(serialized)
                        positives += int(label == 1)
                    written += len(chunk)
                    bar.update(len(chunk))
            finished[file] = {"file": file, "count": stop - start, "positives": positives,
                              "sha256": file_sha256(path)}
            atomic.write_json(os.path.join(output_dir, PARTIAL_FILE), metadata(False))
        meta = metadata(True)
        atomic.write_json(os.path.join(output_dir, METADATA_FILE), meta)
    except (OSError, tf.errors.OpError) as e:  # a full disk, a quota, a vanished mount
        raise DatasetError(
            f"{output_dir}: cannot write there ({_reason(e)}); the {len(finished)} shard(s) "
            "finished so far are kept: make room and re-run the same command to resume") from None
    finally:
        bar.close()
        results.close()
    if os.path.exists(os.path.join(output_dir, PARTIAL_FILE)):
        os.remove(os.path.join(output_dir, PARTIAL_FILE))
    return meta


def _reason(error: Exception) -> str:
    """"No space left on device" from an OSError or from TensorFlow's "PATH; reason"."""
    if isinstance(error, OSError) and error.strerror:
        return error.strerror
    return str(getattr(error, "message", error)).rsplit("; ", 1)[-1].strip()


def _next_chunk(results: Iterator, output_dir: str, file: str) -> list[tuple[bytes, int]]:
    try:
        return next(results)
    except BrokenProcessPool:
        raise DatasetError(f"{output_dir}: " + worker_died(
            f"making {file}", "the shards finished so far are kept")) from None


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
