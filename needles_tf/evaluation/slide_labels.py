"""Slide labels (is there a metastasis on this slide?) from the files CAMELYON distributes, or a
simple CSV, and slide scores from needles-predict-slide's slides.csv or a simple CSV.

Label files, told apart by their content:

* CAMELYON16 `reference.csv` (testing set): no header, rows `test_001,Tumor,Macro,...` or
  `test_002,Normal,...`: Tumor -> 1, Normal -> 0.
* CAMELYON17 `stage_labels.csv`: header `patient,stage`; slide rows
  `patient_000_node_0.tif,negative` (patient rows `patient_000.zip,pN0` are ignored):
  negative -> 0; itc, micro, macro -> 1 (isolated tumour cells are a needle too).
* A simple CSV with header `slide,label` (label 0 or 1).

Slides are named by file name without extension everywhere (test_001, patient_000_node_0).
"""

from __future__ import annotations

import csv
import os

from needles_tf.generation.camelyon import slide_name

CAMELYON16_CLASSES = {"tumor": 1, "normal": 0}
CAMELYON17_STAGES = {"negative": 0, "itc": 1, "micro": 1, "macro": 1}
SCORE_COLUMNS = ("probability", "score")


class LabelError(ValueError):
    """A label or score file that cannot be used; the message names the file and the row."""


def _rows(path: str) -> list[list[str]]:
    try:
        with open(path, newline="") as f:
            rows = [[cell.strip() for cell in row] for row in csv.reader(f)]
    except OSError as e:
        raise LabelError(f"{path}: cannot read ({e.strerror})") from e
    rows = [row for row in rows if any(row)]
    if not rows:
        raise LabelError(f"{path}: empty; expected slide labels")
    return rows


def _parse(path: str, rows: list[list[str]], column: int, mapping: dict[str, int],
           first_row: int) -> dict[str, int]:
    labels = {}
    for number, row in enumerate(rows[first_row:], start=first_row + 1):
        if len(row) <= column:
            raise LabelError(f"{path}: row {number} has {len(row)} columns, expected at least "
                             f"{column + 1}")
        value = row[column].lower()
        if value not in mapping:
            raise LabelError(f"{path}: row {number}: label {row[column]!r}, expected one of "
                             f"{sorted(mapping)}")
        labels[slide_name(row[0])] = mapping[value]
    return labels


def read_labels(path: str) -> dict[str, int]:
    """Slide name -> 0 / 1 from a CAMELYON16 reference.csv, a CAMELYON17 stage_labels.csv or a
    `slide,label` CSV (module docstring).

    Raises:
      LabelError: an unknown layout or label, naming the file and row.
    """
    rows = _rows(path)
    header = [cell.lower() for cell in rows[0]]
    if header[:2] == ["slide", "label"]:
        return _parse(path, rows, 1, {"0": 0, "1": 1}, 1)
    if header[:2] == ["patient", "stage"]:
        slide_rows = [rows[0]] + [r for r in rows[1:] if not r[0].lower().endswith(".zip")]
        return _parse(path, slide_rows, 1, CAMELYON17_STAGES, 1)
    if len(rows[0]) >= 2 and rows[0][1].lower() in CAMELYON16_CLASSES:
        return _parse(path, rows, 1, CAMELYON16_CLASSES, 0)
    raise LabelError(f"{path}: unknown layout (first row {rows[0]}); expected CAMELYON16 "
                     "reference.csv, CAMELYON17 stage_labels.csv or a CSV with header "
                     "slide,label")


def read_scores(path: str) -> dict[str, float]:
    """Slide name -> score from a CSV with a `slide` column and a `probability` (as
    needles-predict-slide's slides.csv) or `score` column; rows whose score is empty (slides
    that failed) are left out.

    Raises:
      LabelError: no such columns, or a score that is not a number.
    """
    if os.path.isdir(path):
        raise LabelError(f"{path}: a directory; give the slides.csv in it")
    rows = _rows(path)
    header = [cell.lower() for cell in rows[0]]
    column = next((header.index(c) for c in SCORE_COLUMNS if c in header), None)
    if "slide" not in header or column is None:
        raise LabelError(f"{path}: expected columns slide and probability (or score); got "
                         f"{rows[0]}")
    name = header.index("slide")
    scores = {}
    for number, row in enumerate(rows[1:], start=2):
        if len(row) <= column or not row[column]:
            continue
        try:
            scores[slide_name(row[name])] = float(row[column])
        except ValueError:
            raise LabelError(f"{path}: row {number}: score {row[column]!r} is not a "
                             "number") from None
    return scores
