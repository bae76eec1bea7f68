"""The nCAMELYON summaries: the paper's Tables 1 (unique lesions) and 2 (crops), markdown and CSV.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any, Mapping, Sequence

from needles_tf import atomic
from needles_tf.data.metadata import SPLITS
from needles_tf.generation.camelyon import SlideSource
from needles_tf.generation.ncamelyon_config import O2I_BINS

if TYPE_CHECKING:
    from needles_tf.generation.ncamelyon import CropSpec

SUMMARY_MD = "summary.md"
SUMMARY_CSV = "summary.csv"
SPLIT_TITLES = {"train": "Train", "val": "Val", "test": "Test"}


def split_summary(sources: Sequence[SlideSource], lesion_plans: Mapping[str, dict],
                  crops: Mapping[str, Sequence[CropSpec]]) -> dict[str, dict[str, int]]:
    """Per split: slides used, unique lesions (regions with a crop), positive/negative crops."""
    summary = {}
    for split in SPLITS:
        chosen = crops[split]
        lesions = {(c.slide, c.region) for c in chosen if c.label}
        summary[split] = {
            "lesion_slides": sum(s.split == split and s.name in lesion_plans for s in sources),
            "negative_slides": sum(s.split == split and s.annotation is None for s in sources),
            "unique_lesions": len(lesions),
            "positives": sum(c.label for c in chosen),
            "negatives": sum(1 - c.label for c in chosen)}
    return summary


def paper_tables(datasets: Sequence[Mapping[str, Any]]) -> tuple[list[list[str]],
                                                                   list[list[str]]]:
    """The paper's Tables 1 (unique lesions) and 2 (crops) over nCAMELYON dataset.json dicts.

    Rows are O2I bins (and "negative" in Table 2), columns crop size x split; each is a list of
    rows, the first two being headers. Missing combinations are "-".
    """
    sizes = sorted({d["params"]["crop_size"] for d in datasets})
    bins = [b for b in O2I_BINS if any(d["params"]["o2i_bin"] == b for d in datasets)]
    header = [["Crop size"] + [str(s) for s in sizes for _ in SPLITS],
              ["O2I ratio"] + [SPLIT_TITLES[s] for _ in sizes for s in SPLITS]]
    cell: dict[tuple, dict] = {(d["params"]["crop_size"], d["params"]["o2i_bin"]): d["summary"]
                               for d in datasets}

    def row(label: str, bin_name: str | None, key: str) -> list[str]:
        out = [label]
        for size in sizes:
            for split in SPLITS:
                if bin_name is None:  # negatives: one count per crop size (they match a bin)
                    values = [v[split][key] for (s, _), v in cell.items() if s == size]
                    out.append("/".join(str(v) for v in sorted(set(values))) or "-")
                else:
                    summary = cell.get((size, bin_name))
                    out.append(str(summary[split][key]) if summary else "-")
        return out

    table1 = header + [row(f"({b}]%", b, "unique_lesions") for b in bins]
    table2 = header + [row(f"({b}]%", b, "positives") for b in bins]
    table2.append(row("negative", None, "negatives"))
    return table1, table2


def markdown_table(rows: Sequence[Sequence[str]]) -> str:
    """A markdown table of header rows[0] (rows[1] becomes the first body row)."""
    lines = ["| " + " | ".join(rows[0]) + " |", "|" + "---|" * len(rows[0])]
    lines += ["| " + " | ".join(r) + " |" for r in rows[1:]]
    return "\n".join(lines)


def summary_text(meta: Mapping[str, Any]) -> str:
    """Markdown summary of one nCAMELYON data set: Tables 1 and 2 and the skipped slides."""
    params = meta["params"]
    table1, table2 = paper_tables([meta])
    lines = [f"# nCAMELYON: crop {params['crop_size']}, O2I bin ({params['o2i_bin']}] %, "
             f"level {params['level']}, seed {params['seed']}", "",
             "Table 1: unique lesions", "", markdown_table(table1), "",
             "Table 2: crops (balanced per split)", "", markdown_table(table2), ""]
    for split in SPLITS:
        info = meta["summary"][split]
        lines.append(f"- {split}: {info['lesion_slides']} lesion slides, "
                     f"{info['negative_slides']} negative slides, {info['positives']} positive "
                     f"and {info['negatives']} negative crops")
    if meta["skipped"]:
        lines += ["", "Skipped slides:", ""] + [f"- {s['error']}" for s in meta["skipped"]]
    return "\n".join(lines) + "\n"


def write_summary(output_dir: str, meta: Mapping[str, Any]) -> None:
    text = summary_text(meta)
    rows = ["split,lesion_slides,negative_slides,unique_lesions,positives,negatives"]
    rows += [",".join([split] + [str(v[k]) for k in ("lesion_slides", "negative_slides",
                                                     "unique_lesions", "positives",
                                                     "negatives")])
             for split, v in ((s, meta["summary"][s]) for s in SPLITS)]
    for name, content in ((SUMMARY_MD, text), (SUMMARY_CSV, "\n".join(rows) + "\n")):
        atomic.write_text(os.path.join(output_dir, name), content)
