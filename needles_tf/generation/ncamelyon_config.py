"""The parameters of one nCAMELYON data set: crop size, O2I bin, resolution, sampling and the split
rule.

Resolution: `mpp` (microns per pixel; wsi.level_at_mpp) reads every slide at one physical scale,
whatever its scanner; without it, pyramid `level` is read as it is (the former behaviour: the
same index is a different scale on slides of different scanners). `assume_mpp` is the level-0
resolution of slides that record none (without it they are skipped in `mpp` mode).
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from needles_tf.generation import camelyon, wsi

O2I_BINS = {"50-100": (0.5, 1.0), "10-50": (0.1, 0.5), "1-10": (0.01, 0.1),
            "0.1-1": (0.001, 0.01)}
CROP_SIZES = (128, 256, 512, 1024)  # the paper's


@dataclasses.dataclass(frozen=True)
class NcamelyonConfig:
    """Parameters of one nCAMELYON data set (one crop size, one O2I bin)."""

    crop_size: int = 256
    o2i_bin: str = "1-10"
    crops_per_region: int = 50
    level: int = 3
    mpp: float | None = None
    assume_mpp: float | None = None
    seed: int = 0
    lesion_groups: tuple[str, ...] = camelyon.DEFAULT_LESION_GROUPS
    exclusion_groups: tuple[str, ...] = camelyon.DEFAULT_EXCLUSION_GROUPS
    val_centers: tuple[int, ...] = (3,)
    test_centers: tuple[int, ...] = (4,)
    max_mean_green: float = 200.0
    negative_tries: int = 20
    num_shards: int = 8

    def __post_init__(self):
        if self.o2i_bin not in O2I_BINS:
            raise ValueError(f"o2i_bin must be one of {list(O2I_BINS)}, got {self.o2i_bin!r}")
        for name in ("crop_size", "crops_per_region", "negative_tries", "num_shards"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.level < 0 or self.seed < 0:
            raise ValueError(f"level and seed must be >= 0, got {self.level}, {self.seed}")
        for name in ("mpp", "assume_mpp"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise ValueError(f"{name} must be positive microns per pixel, got {value}")
        if set(self.val_centers) & set(self.test_centers):
            raise ValueError(f"val_centers {self.val_centers} and test_centers "
                             f"{self.test_centers} overlap")
        # Lists from JSON or flags become tuples, so configs compare and hash alike.
        for name in ("lesion_groups", "exclusion_groups", "val_centers", "test_centers"):
            object.__setattr__(self, name, tuple(getattr(self, name)))

    @property
    def bounds(self) -> tuple[float, float]:
        """The O2I bin as fractions (lo, hi]."""
        return O2I_BINS[self.o2i_bin]

    def grid(self, slide, path: str) -> wsi.Level:
        """The grid crops and masks are taken on: the slide at `mpp`, else pyramid `level`."""
        return wsi.level_for(slide, path, self.level, self.mpp, self.assume_mpp)

    def to_dict(self) -> dict[str, Any]:
        return json.loads(json.dumps(dataclasses.asdict(self)))
