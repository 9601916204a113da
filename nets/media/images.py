"""Images: any picture file -> ``(H, W, 3)`` uint8 RGB, and resizing; encoded pictures in memory (the
worker wire, the web page's webcam frames) checked from their header before they are decoded."""

from __future__ import annotations

import io
import math
import os
import struct
import warnings

import numpy as np
from PIL import Image, ImageOps

from nets.errors import UserError
from .files import IMAGE_EXTS, IMAGE_HINT, check_input_file, short_error

DEFAULT_MAX_IMAGE_SIDE = 2048
MAX_DECODED_PIXELS = 64_000_000  # an image is refused (from its header) when decoding would take more
MIN_IMAGE_SIDE = 8  # pixels a side an image must have, as read (after downscaling to max_side)


_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, IndexError, struct.error, Image.DecompressionBombError)


def _to_uint8(a: np.ndarray) -> np.ndarray:
    """A single-channel integer/float array of any depth -> uint8 (16-bit scaled, not clipped)."""
    if a.dtype == np.uint8:
        return a
    if a.dtype.kind == "f":
        a = np.nan_to_num(a.astype(np.float64))
        if a.max(initial=0) <= 1.0:
            a = a * 255.0
        return np.clip(a + 0.5, 0, 255).astype(np.uint8)
    top = int(a.max(initial=0))
    if a.dtype.itemsize >= 2 and top > 255:  # 16-bit (or 16-bit values in a 32-bit "I" image)
        return np.clip((a.astype(np.float64) / 257.0) + 0.5, 0, 255).astype(np.uint8)
    return np.clip(a, 0, 255).astype(np.uint8)


def _composite_on_white(rgba: Image.Image) -> Image.Image:
    white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return Image.alpha_composite(white, rgba.convert("RGBA")).convert("RGB")


def image_to_rgb(im: Image.Image) -> np.ndarray:
    """Any PIL image mode -> ``(H, W, 3)`` uint8 RGB (alpha composited on white, 16-bit scaled)."""
    mode = im.mode
    if mode in ("RGBA", "LA", "PA", "RGBa", "La") or (mode == "P" and "transparency" in im.info):
        return np.asarray(_composite_on_white(im))
    if mode.startswith("I") or mode == "F":  # 16/32-bit grayscale, float
        g = _to_uint8(np.asarray(im))
        return np.repeat(g[..., None], 3, axis=2)
    if mode != "RGB":
        im = im.convert("RGB")
    return np.asarray(im)


def read_image(path: "str | os.PathLike", max_side: int = DEFAULT_MAX_IMAGE_SIDE, what: str = "source image") -> np.ndarray:
    """Read a photo as ``(H, W, 3)`` uint8 RGB, upright (EXIF), at most ``max_side`` pixels a side.

    JPEGs are decoded at a reduced scale when they are much larger than ``max_side`` (the decoder's
    DCT scaling), so a 50-megapixel photo never costs its full size in memory.
    """
    p = check_input_file(path, what, IMAGE_EXTS, IMAGE_HINT)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(p) as im:
                header = im.size  # the picture's own size, from the file's header
                if im.format == "JPEG" and max(im.size) > max_side:
                    # decode at 1/2, 1/4 or 1/8 scale (DCT scaling) while keeping the long side >= max_side
                    s = max_side / max(im.size)
                    im.draft("RGB", (math.ceil(im.size[0] * s), math.ceil(im.size[1] * s)))
                if im.size[0] * im.size[1] > MAX_DECODED_PIXELS:  # what decoding costs (a JPEG draft: less),
                    raise image_too_large(what, p.name, header)   # checked before the pixels are decoded
                im.load()
                ImageOps.exif_transpose(im, in_place=True)  # (a copy otherwise)
                if max(im.size) > max_side:
                    if im.mode in ("1", "P") and "transparency" not in im.info:  # 1 byte a pixel, not 3
                        im = im.convert("L" if im.mode == "1" else "RGB")
                    if im.mode not in ("RGB", "RGBA", "L", "LA"):
                        im = Image.fromarray(image_to_rgb(im))
                    im.thumbnail((max_side, max_side), Image.Resampling.LANCZOS, reducing_gap=3.0)
                rgb = image_to_rgb(im)
    except Image.DecompressionBombError:  # PIL's own limit (above ours) refused it before telling the size
        raise image_too_large(what, p.name) from None
    except Image.UnidentifiedImageError:
        raise UserError(f"cannot read {what} {p.name}: not a valid image (corrupted, or not {IMAGE_HINT}); "
                        "re-export it as PNG or JPEG") from None
    except _DECODE_ERRORS as e:
        raise UserError(f"cannot read {what} {p.name}: the file is corrupted or truncated ({short_error(e)}); "
                        "re-export or re-download it") from None
    if min(rgb.shape[:2]) < MIN_IMAGE_SIDE:
        read = (rgb.shape[1], rgb.shape[0])
        if (header[0] > header[1]) != (read[0] > read[1]):  # turned upright by its EXIF orientation
            header = header[::-1]
        raise image_too_small(what, p.name, header, read, max_side)
    return np.ascontiguousarray(rgb)


def image_too_large(what: str, name: str, size: "tuple[int, int] | None" = None) -> UserError:
    """The one message for a picture over :data:`MAX_DECODED_PIXELS` (``size`` from its header, when
    known)."""
    has = f"is {size[0]}x{size[1]} pixels, " if size else "is "
    return UserError(f"{what} {name} {has}too large to decode (at most {MAX_DECODED_PIXELS // 1_000_000} "
                     "megapixels); downscale it")


def image_too_small(what: str, name: str, size: "tuple[int, int]", read: "tuple[int, int]", max_side: int
                    ) -> UserError:
    """The one message for a picture with a side under :data:`MIN_IMAGE_SIDE` pixels: its own size,
    and what it became when its long side was brought down to ``max_side``."""
    if min(size) < MIN_IMAGE_SIDE:
        return UserError(f"{what} {name} is only {size[0]}x{size[1]} pixels; use an image at least "
                         f"{MIN_IMAGE_SIDE} pixels on each side")
    return UserError(f"{what} {name} is {size[0]}x{size[1]} pixels, too narrow: with its long side brought down "
                     f"to {max_side} it is {read[0]}x{read[1]}, under {MIN_IMAGE_SIDE} pixels on a side; crop it")


def resize_rgb(rgb: np.ndarray, size: "int | tuple[int, int]") -> np.ndarray:
    """``(H, W, 3)`` uint8 -> ``(h, w, 3)`` (``size`` = side or (w, h)), antialiased."""
    w, h = (size, size) if isinstance(size, int) else size
    if rgb.shape[1] == w and rgb.shape[0] == h:
        return rgb
    im = Image.fromarray(rgb).resize((w, h), Image.Resampling.BICUBIC, reducing_gap=2.0)
    return np.asarray(im)


# ---------------------------------------------------------------------------------------------
# Encoded pictures in memory (the worker wire, the web page's webcam frames)
# ---------------------------------------------------------------------------------------------

BYTES_FORMATS = ("JPEG", "WEBP", "PNG")  # PIL's names of the formats accepted from memory


class ImageBytesError(ValueError):
    """Bytes that are not an accepted picture: not a JPEG, WebP or PNG, damaged, or of a refused size."""


class ImageSizeError(ImageBytesError):
    """A picture whose header gives a refused size (found before anything was decompressed)."""


def _read_bytes(data: bytes, max_size: "tuple[int, int]", exact: bool, decode: bool):
    (mw, mh) = max_size
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data), formats=list(BYTES_FORMATS)) as im:
                w, h = im.size  # from the header: nothing is decompressed before this check
                if exact and (w, h) != (mw, mh):
                    raise ImageSizeError(f"expected a {mw}x{mh} image, got {w}x{h}")
                if max(w, h) > max(mw, mh) or min(w, h) > min(mw, mh):
                    raise ImageSizeError(f"the image is {w}x{h} pixels, larger than {mw}x{mh}")
                return np.asarray(im.convert("RGB")) if decode else (w, h)
    except ImageBytesError:
        raise
    except Image.DecompressionBombError:  # PIL refused the header's size before telling it
        raise ImageSizeError(f"expected a {mw}x{mh} image, got a far larger one" if exact else
                              f"the image is far larger than {mw}x{mh} pixels") from None
    except _DECODE_ERRORS as e:  # (UnidentifiedImageError is an OSError)
        raise ImageBytesError(f"not a JPEG, WebP or PNG image ({type(e).__name__})") from None


def check_image_bytes(data: bytes, max_size: "tuple[int, int]", exact: bool = False) -> "tuple[int, int]":
    """The (width, height) of JPEG / WebP / PNG ``data``, read from its header alone (nothing is
    decompressed); :class:`ImageBytesError` for anything else, and its :class:`ImageSizeError` for
    a picture larger than ``max_size`` (width, height; either way round) or, with ``exact``, not
    exactly ``max_size``."""
    return _read_bytes(data, max_size, exact, decode=False)


def decode_image_bytes(data: bytes, max_size: "tuple[int, int]", exact: bool = False) -> np.ndarray:
    """JPEG / WebP / PNG ``data`` -> ``(H, W, 3)`` uint8 RGB, refused from its header first as by
    :func:`check_image_bytes`, so a small file that claims a huge picture costs nothing."""
    return _read_bytes(data, max_size, exact, decode=True)
