"""Figures of where a classifier looks (like the paper's Figs. 16, 18-21): one per outcome.

Each kept image is drawn twice side by side, under its saliency (red) and under its evidence
(red for a needle, blue against), with the needle's outline in blue and a caption giving the
true label and the predicted probability.
"""

from __future__ import annotations

from typing import Sequence

from matplotlib.figure import Figure

from needles_tf.evaluation.saliency import Example
from needles_tf.heatmaps import draw_panel, save_figure

PER_ROW = 4  # images per row (two panels each)
PANEL_INCHES = 1.6


def write_examples_figure(path: str, examples: Sequence[Example], title: str) -> None:
    """Writes a PNG grid of `examples` (at least one) with `title` on top, atomically."""
    if not examples:
        raise ValueError("write_examples_figure: no examples to draw")
    rows = -(-len(examples) // PER_ROW)
    columns = 2 * min(len(examples), PER_ROW)
    figure = Figure(figsize=(columns * PANEL_INCHES, rows * (PANEL_INCHES + 0.3) + 0.4),
                    layout="constrained")
    figure.suptitle(title, fontsize=10)
    axes = figure.subplots(rows, columns, squeeze=False)
    for ax in axes.flat:
        ax.set_axis_off()
    for k, example in enumerate(examples):
        row, column = divmod(k, PER_ROW)
        caption = f"label {example.label}, P {example.probability:.2f}"
        draw_panel(axes[row, 2 * column], example.image, example.maps["saliency"], signed=False,
                   outline=example.region, title=f"saliency: {caption}")
        draw_panel(axes[row, 2 * column + 1], example.image, example.maps["evidence"],
                   signed=True, outline=example.region, title="evidence")
    save_figure(figure, path)
