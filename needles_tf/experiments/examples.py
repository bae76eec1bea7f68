"""Example images per O2I ratio from dataset directories (the paper's Figs. 2, 10 and 11): a
look at the data without writing code."""

from __future__ import annotations

import os
from typing import Sequence

import numpy as np

from needles_tf.data import metadata
from needles_tf.experiments import plots
from needles_tf.experiments.results import o2i_of


def _o2i_label(data_dir: str) -> tuple[float, str]:
    meta = metadata.read_metadata(data_dir)
    o2i, label = o2i_of(meta["kind"], meta["params"])
    return (0.0, meta["kind"]) if np.isnan(o2i) else (o2i, f"O2I {label}")


def draw_examples(data_dirs: Sequence[str], path_stem: str, per_class: int = 2,
                  split: str = "val") -> list[str]:
    """A grid of `per_class` positive and negative `split` images per dataset, largest O2I
    first; writes PNG and PDF, returns their paths.

    Raises:
        metadata.DatasetError: a directory that is not a dataset.
    """
    from needles_tf.input import make_dataset

    ordered = sorted(data_dirs, key=lambda d: -_o2i_label(d)[0])
    figure, _ = plots.panels(1)
    figure.clear()
    columns = 2 * per_class
    figure.set_size_inches(2.0 * columns, 2.1 * len(ordered))
    for row, data_dir in enumerate(ordered):
        wanted = {1: per_class, 0: per_class}
        chosen = {1: [], 0: []}
        for images, labels in make_dataset(data_dir, split, 32, training=False, cache="none"):
            for image, label in zip(images.numpy(), labels.numpy()):
                if len(chosen[int(label)]) < wanted[int(label)]:
                    chosen[int(label)].append(image)
            if all(len(chosen[k]) == wanted[k] for k in wanted):
                break
        for col, (label, image) in enumerate([(1, im) for im in chosen[1]] +
                                             [(0, im) for im in chosen[0]]):
            ax = figure.add_subplot(len(ordered), columns, row * columns + col + 1)
            shown = image[..., 0] if image.shape[-1] == 1 else np.clip(image, 0, 1)
            ax.imshow(shown, cmap="gray" if image.shape[-1] == 1 else None, vmin=0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(("positive" if label else "negative") + f" ({image.shape[0]} px)",
                         fontsize=7)
            if col == 0:
                ax.set_ylabel(f"{os.path.basename(os.path.normpath(data_dir))}\n"
                              f"{_o2i_label(data_dir)[1]}", fontsize=7)
    return plots.save(figure, path_stem)
