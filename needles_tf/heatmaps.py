"""Heatmaps on images: maps placed on the pixels they describe, and drawn with a colour bar.

Shared by needles-predict (evidence maps of an exported model) and needles-saliency (saliency
and evidence maps of a run), so it lives beside both. An evidence map has one value per
embedding location; each is placed at the centre of its receptive field (models.bagnet's
EMBEDDING_OFFSET + EMBEDDING_STRIDE * i) and interpolated between centres, so a hot location
lights up the pixels it looks at (a plain resize would shift it by up to half a stride).
"""

from __future__ import annotations

import matplotlib
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from scipy import ndimage

from needles_tf import atomic
from needles_tf.models.bagnet import EMBEDDING_OFFSET, EMBEDDING_STRIDE

SIGNED_COLORMAP = "RdBu_r"  # evidence: red for a needle, blue against, white none
UNSIGNED_COLORMAP = "Reds"  # saliency: red where the prediction is sensitive
MAX_ALPHA = 0.6
MIN_DISPLAY = 256  # smaller images are drawn enlarged (pixels as blocks) to this size


def place_evidence(evidence: np.ndarray, height: int, width: int) -> np.ndarray:
    """float32 [height, width]: `evidence` [h, w] at its locations' receptive-field centres,
    linear in between, the nearest location's value beyond the outermost centres."""
    rows = (np.arange(height, dtype=np.float32) - EMBEDDING_OFFSET) / EMBEDDING_STRIDE
    cols = (np.arange(width, dtype=np.float32) - EMBEDDING_OFFSET) / EMBEDDING_STRIDE
    grid = np.meshgrid(rows, cols, indexing="ij")
    return ndimage.map_coordinates(np.asarray(evidence, np.float32), grid, order=1,
                                   mode="nearest")


def overlay(image: np.ndarray, heat: np.ndarray, signed: bool,
            limit: float | None = None) -> np.ndarray:
    """uint8 RGB [H, W, 3]: `image` ([H, W, 1 or 3] in [0, 1]) under `heat` [H, W] in colour.

    The heat is scaled by `limit` (default: its largest magnitude; beyond it the colour is
    full); the colour's opacity grows with the magnitude, so pixels without heat show the
    image unchanged. `signed`: a diverging map around 0 (evidence), else a sequential one from
    0 (saliency).
    """
    height, width = image.shape[:2]
    heat = np.asarray(heat, np.float32)
    if heat.shape != (height, width):
        raise ValueError(f"heat map {heat.shape} does not match the image's {(height, width)}")
    normalised = np.clip(heat / (limit or float(np.abs(heat).max()) or 1.0), -1, 1)
    if signed:
        colour = matplotlib.colormaps[SIGNED_COLORMAP]((normalised + 1) / 2)[..., :3]
    else:
        colour = matplotlib.colormaps[UNSIGNED_COLORMAP](np.clip(normalised, 0, 1))[..., :3]
    alpha = (MAX_ALPHA * np.abs(normalised))[..., None]
    base = np.broadcast_to(image, (height, width, 3)) if image.shape[-1] == 1 else image
    blended = (1 - alpha) * base + alpha * colour
    return np.clip(np.rint(blended * 255), 0, 255).astype(np.uint8)


def draw_panel(axes, image: np.ndarray, heat: np.ndarray, signed: bool,
               outline: np.ndarray | None = None, title: str | None = None):
    """Draws `overlay(image, heat, signed)` on matplotlib `axes`, pixels as blocks, with the
    boolean `outline` mask's contour in blue; returns the colour scale (for a colour bar)."""
    axes.imshow(overlay(image, heat, signed), interpolation="nearest")
    if outline is not None and outline.any():
        axes.contour(outline.astype(np.float32), levels=[0.5], colors="blue", linewidths=1.0)
    axes.set_axis_off()
    if title:
        axes.set_title(title, fontsize=8)
    limit = float(np.abs(heat).max()) or 1.0
    colormap = SIGNED_COLORMAP if signed else UNSIGNED_COLORMAP
    norm = matplotlib.colors.Normalize(-limit if signed else 0.0, limit)
    return matplotlib.cm.ScalarMappable(norm=norm, cmap=colormap)


def save_figure(figure: Figure, path: str) -> None:
    """Writes a matplotlib figure as PNG atomically (temporary name, then rename)."""
    FigureCanvasAgg(figure)
    with atomic.atomic_path(path) as tmp:
        figure.savefig(tmp, format="png", dpi=100)


def write_heatmap(path: str, image: np.ndarray, evidence: np.ndarray,
                  probability: float) -> str:
    """Writes the evidence heatmap of one image: a PNG (the image, enlarged when small, under
    its placed evidence, a colour bar and the needle probability) and the raw map [h, w] as
    `.npy` beside it. Returns the .npy path."""
    height, width = image.shape[:2]
    zoom = max(1.0, MIN_DISPLAY / max(height, width))
    figure = Figure(figsize=(width * zoom / 100 + 1.4, height * zoom / 100 + 0.5),
                    layout="constrained")
    axes = figure.subplots()
    scale = draw_panel(axes, image, place_evidence(evidence, height, width), signed=True,
                       title=f"P(needle) = {probability:.3f}")
    bar = figure.colorbar(scale, ax=axes, fraction=0.08, pad=0.03)
    bar.set_label("evidence for a needle (logit units)", fontsize=8)
    save_figure(figure, path)
    raw = path[:-len(".png")] + ".npy" if path.endswith(".png") else path + ".npy"
    with atomic.atomic_path(raw) as tmp, open(tmp, "wb") as f:
        np.save(f, np.asarray(evidence, np.float32))
    return raw
