"""The slide files that needles-predict-slide is given: files, and folders searched for slides."""

from __future__ import annotations

import os
from typing import Iterable

from needles_tf.generation import wsi
from needles_tf.generation.camelyon import files_under, slide_name

SLIDE_SUFFIXES = (".svs", ".tif", ".tiff", ".ndpi", ".vms", ".vmu", ".scn", ".mrxs",
                  ".svslide", ".bif")


def find_slides(inputs: Iterable[str]) -> list[str]:
    """Slide files from files and directories (searched recursively for SLIDE_SUFFIXES).

    Raises:
      wsi.SlideError: an input that does not exist, or two slides with the same name (their
        outputs would collide).
    """
    found = []
    for item in inputs:
        if os.path.isdir(item):
            found += files_under(item, SLIDE_SUFFIXES)
        elif os.path.isfile(item):
            found.append(item)
        else:
            raise wsi.SlideError(f"{item}: no such file or directory")
    names: dict[str, str] = {}
    for path in found:
        other = names.setdefault(slide_name(path), path)
        if other != path:
            raise wsi.SlideError(f"{path}: a second slide named {slide_name(path)!r} (also "
                                 f"{other}); outputs are named by slide, so names must differ")
    return found
