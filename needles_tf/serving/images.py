"""Reading image files for prediction: PNG (and other Pillow formats), TIFF, NPY -> [H, W, C].

Pixel values: uint8 is divided by 255, uint16 by 65535, bool gives 0 / 1, and floating-point
arrays must already lie in [0, 1]; other dtypes are refused. Shapes: [H, W] (grey), [H, W, 1] or
[H, W, 3]. PNGs are converted by Pillow to grey (modes 1, L, LA, I, I;16) or RGB (everything
else; alpha is dropped). `fit_channels` then converts to the model's channel count: grey -> RGB
repeats the grey channel; RGB -> grey takes the mean of the three channels (equal weights, so a
grey image stored as RGB gives back exactly its grey values).
"""

from __future__ import annotations

import os

import numpy as np

PILLOW_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif")
TIFF_SUFFIXES = (".tif", ".tiff")
NPY_SUFFIXES = (".npy",)
GREY_MODES = ("1", "L", "LA", "I", "I;16", "I;16B", "I;16L")


class ImageError(ValueError):
    """An image file that cannot be used; the message names the file and the problem."""


def _read_pillow(path: str) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as im:
        if im.mode.startswith("I"):  # 16-bit grey
            return np.asarray(im).astype(np.uint16)
        return np.asarray(im.convert("L" if im.mode in GREY_MODES else "RGB"))


def _read_array(path: str) -> np.ndarray:
    suffix = os.path.splitext(path)[1].lower()
    if suffix in PILLOW_SUFFIXES:
        return _read_pillow(path)
    if suffix in TIFF_SUFFIXES:
        import tifffile

        return tifffile.imread(path)
    if suffix in NPY_SUFFIXES:
        return np.load(path, allow_pickle=False)
    known = ", ".join(PILLOW_SUFFIXES + TIFF_SUFFIXES + NPY_SUFFIXES)
    raise ImageError(f"{path}: unsupported file type {suffix or '(none)'!r}; expected {known}")


def _to_unit_float(array: np.ndarray, path: str) -> np.ndarray:
    if array.dtype == np.uint8:
        return array.astype(np.float32) / 255.0
    if array.dtype == np.uint16:
        return array.astype(np.float32) / 65535.0
    if array.dtype == np.bool_:
        return array.astype(np.float32)
    if np.issubdtype(array.dtype, np.floating):
        if not np.isfinite(array).all():
            raise ImageError(f"{path}: pixel values must be finite; found NaN or inf")
        if array.size and not (0 <= array.min() and array.max() <= 1):
            raise ImageError(f"{path}: float pixel values must lie in [0, 1]; found "
                             f"[{array.min():g}, {array.max():g}]")
        return array.astype(np.float32)
    raise ImageError(f"{path}: pixel type {array.dtype} not supported; expected uint8, uint16, "
                     "bool or float in [0, 1]")


def read_image(path: str) -> np.ndarray:
    """The image in `path` as float32 [H, W, 1 or 3] in [0, 1]; ImageError naming the file."""
    if not os.path.isfile(path):
        raise ImageError(f"{path}: no such file")
    try:
        array = np.asarray(_read_array(path))
    except ImageError:
        raise
    except Exception as e:  # every reader has its own error types; report them on one line
        raise ImageError(f"{path}: cannot read image ({type(e).__name__}: {e})") from e
    if array.ndim == 2:
        array = array[..., None]
    if array.ndim != 3 or array.shape[-1] not in (1, 3):
        raise ImageError(f"{path}: array of shape {array.shape} is not an image; expected "
                         "[H, W] (grey), [H, W, 1] or [H, W, 3] (RGB)")
    if 0 in array.shape:
        raise ImageError(f"{path}: empty image of shape {array.shape}")
    return _to_unit_float(array, path)


def fit_channels(image: np.ndarray, channels: int, path: str) -> np.ndarray:
    """Grey -> RGB by repeating, RGB -> grey by the channel mean; ImageError for anything else."""
    have = image.shape[-1]
    if have == channels:
        return image
    if have == 1 and channels == 3:
        return np.repeat(image, 3, axis=-1)
    if have == 3 and channels == 1:
        return image.mean(axis=-1, keepdims=True, dtype=np.float32)
    raise ImageError(f"{path}: image has {have} channel(s), the model takes {channels}; "
                     "only grey <-> RGB is converted")
