"""Reading image files for prediction: PNG (and other Pillow formats), TIFF, NPY -> [H, W, C].

Pixel values: uint8 is divided by 255, uint16 by 65535, bool gives 0 / 1, and floating-point
arrays must already lie in [0, 1]; other dtypes are refused. Shapes: [H, W] (grey), [H, W, 1] or
[H, W, 3]. PNGs are converted by Pillow to grey (modes 1, L, LA, I, I;16) or RGB (everything
else; alpha is dropped). `fit_channels` then converts to the model's channel count: grey -> RGB
repeats the grey channel; RGB -> grey takes the mean of the three channels (equal weights, so a
grey image stored as RGB gives back exactly its grey values).

Decompression bombs: Pillow refuses images above 179 megapixels, which are exactly the large
images tile streaming is for. Its limit is replaced by ours, `max_pixels`, checked from the
file's header before any pixel is decoded: by default what half the available memory holds at
BYTES_PER_PIXEL (the decoded image as float32 RGB plus its uint8 source; streaming needs
only a tile beyond that).
"""

from __future__ import annotations

import os

import numpy as np

PILLOW_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif")
TIFF_SUFFIXES = (".tif", ".tiff")
NPY_SUFFIXES = (".npy",)
KNOWN_SUFFIXES = PILLOW_SUFFIXES + TIFF_SUFFIXES + NPY_SUFFIXES
GREY_MODES = ("1", "L", "LA", "I", "I;16", "I;16B", "I;16L")


BYTES_PER_PIXEL = 4 * 3 + 3


def default_max_pixels() -> int:
    """The largest image read by default: half the available memory at BYTES_PER_PIXEL."""
    with open("/proc/meminfo") as f:
        fields = dict(line.split(":", 1) for line in f)
    return int(fields["MemAvailable"].split()[0]) * 1024 // 2 // BYTES_PER_PIXEL


class ImageError(ValueError):
    """An image file that cannot be used; the message names the file and the problem."""


def _header_pixels(path: str, suffix: str) -> int:
    """Pixels of the image in `path`, from its header alone."""
    if suffix in PILLOW_SUFFIXES:
        from PIL import Image

        with Image.open(path) as im:
            return im.size[0] * im.size[1]
    if suffix in TIFF_SUFFIXES:
        import tifffile

        with tifffile.TiffFile(path) as tif:
            shape = tif.series[0].shape
    else:
        shape = np.load(path, mmap_mode="r", allow_pickle=False).shape
    return int(np.prod(shape[:2])) if len(shape) >= 2 else 0


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
    known = ", ".join(KNOWN_SUFFIXES)
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


def read_image(path: str, max_pixels: int | None = None) -> np.ndarray:
    """The image in `path` as float32 [H, W, 1 or 3] in [0, 1]; ImageError naming the file.

    max_pixels: refuse larger images before decoding them (default: `default_max_pixels`).
    """
    if not os.path.isfile(path):
        raise ImageError(f"{path}: no such file")
    limit = max_pixels or default_max_pixels()
    source = "given" if max_pixels else "half the available memory"
    suffix = os.path.splitext(path)[1].lower()
    from PIL import Image

    # ours replaces Pillow's, which Image.open (the header, too) would raise above 358 MP
    Image.MAX_IMAGE_PIXELS = None
    try:
        pixels = _header_pixels(path, suffix) if suffix in KNOWN_SUFFIXES else 0
        if pixels > limit:
            raise ImageError(f"{path}: {pixels:,} pixels, above the limit of {limit:,} (a "
                             f"guard against decompression bombs, {source}); raise it with "
                             "--max_pixels")
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
