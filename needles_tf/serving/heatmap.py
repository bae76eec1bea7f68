"""Evidence heatmaps: the needle evidence map, upsampled and overlaid in colour on the image."""

from __future__ import annotations

import matplotlib
import numpy as np
from PIL import Image

from needles_tf import atomic

COLORMAP = "RdBu_r"  # red: evidence for a needle, blue: against, white: none
MAX_ALPHA = 0.6


def evidence_overlay(image: np.ndarray, evidence: np.ndarray) -> np.ndarray:
    """uint8 RGB [H, W, 3]: `image` ([H, W, 1 or 3] in [0, 1]) under the colour-coded evidence.

    `evidence` [h, w] (class-1 minus class-0 evidence per location) is upsampled bilinearly to
    H x W and scaled by its largest magnitude; the colour's opacity grows with the magnitude,
    so locations without evidence show the image unchanged.
    """
    height, width = image.shape[:2]
    resized = Image.fromarray(np.asarray(evidence, np.float32)).resize(
        (width, height), Image.BILINEAR)
    evidence = np.asarray(resized, np.float32)
    scale = float(np.abs(evidence).max()) or 1.0
    normalised = evidence / scale  # in [-1, 1]
    colour = matplotlib.colormaps[COLORMAP]((normalised + 1) / 2)[..., :3]
    alpha = (MAX_ALPHA * np.abs(normalised))[..., None]
    base = np.broadcast_to(image, (height, width, 3)) if image.shape[-1] == 1 else image
    blended = (1 - alpha) * base + alpha * colour
    return np.clip(np.rint(blended * 255), 0, 255).astype(np.uint8)


def write_heatmap(path: str, image: np.ndarray, evidence: np.ndarray) -> None:
    """Writes `evidence_overlay(image, evidence)` as a PNG, atomically (temporary name, rename)."""
    with atomic.atomic_path(path) as tmp:
        Image.fromarray(evidence_overlay(image, evidence)).save(tmp, format="PNG")
