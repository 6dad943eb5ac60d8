"""Decoded images as 8-bit RGB, the way dlib's ``load_rgb_image`` turns them into ``rgb_pixel`` s.

dlib reads PNGs with libpng expanding palettes and 1/2/4-bit grey to 8 bits and transparency (``tRNS``) to an
alpha channel, then assigns each pixel to an ``rgb_pixel`` (``dlib/image_loader/png_loader.h``; the assignment
rules are in ``dlib/pixel.h``):

- grey: copied to the three channels; grey + alpha: the alpha is ignored;
- RGB + alpha (RGBA, palettes and RGB with transparency): composited over black with dlib's fixed-point blend,
  ``c`` where ``alpha == 255``, else ``(c * alpha) >> 8``;
- JPEG: libjpeg's RGB (CMYK and YCbCr converted as Pillow does; both equal dlib's output).

The other formats read from a folder (BMP, GIF, TIFF, WebP, ...: :data:`dcnn.io.images.PHOTO_FORMATS`) decode to
the same Pillow modes and follow the same rules (dlib reads BMP, GIF and WebP with them too); a mode outside them
(floating-point samples) is refused from the file's header (:func:`check_mode`).

For 16-bit PNGs dlib's result is not an image: grey saturates to 255 (``assign_pixel`` clamps a ``uint16`` to
255) and colour keeps the low byte (``static_cast<uint8>``). dcnn reads them as their 8-bit equivalents
instead: the high byte of each sample (libpng's ``png_set_strip_16``, and what Pillow does for 16-bit colour),
then the rules above. The PNG specification stores data of fewer significant bits (12-bit scans, ``sBIT``) scaled
to the full 16-bit range, so the high byte is right for them too. EXIF orientation is ignored, as dlib ignores it.
"""

from __future__ import annotations

import numpy as np

from dcnn.errors import InputError

__all__ = ["check_mode", "composite_over_black", "rgb8"]

#: Pillow modes of 16- and 32-bit integer grey samples (a 16-bit grey PNG opens as one of them).
_WIDE_GREY = ("I;16", "I;16B", "I;16L", "I;16N", "I")
#: Modes whose alpha channel (or transparency) dlib ignores: grey + alpha.
_GREY_ALPHA = ("LA", "La")
#: PNG colour type of grey + alpha (PNG specification, 11.2.2).
PNG_GREY_ALPHA = 4
#: Modes converted by Pillow exactly as dlib converts them.
_PLAIN = ("1", "L", "RGB", "CMYK", "YCbCr", "P")
#: Modes with an alpha channel composited over black.
_ALPHA = ("RGBA", "RGBa", "PA")
#: Every mode :func:`rgb8` reads.
READABLE_MODES = frozenset((*_WIDE_GREY, *_GREY_ALPHA, *_ALPHA, *_PLAIN))


def _png_colour_type(image) -> int | None:
    """The colour type in a PNG file's header (``IHDR``, byte 25 of the file), ``None`` for other images."""
    if image.format != "PNG" or not getattr(image, "filename", None):
        return None
    with open(image.filename, "rb") as handle:
        header = handle.read(26)
    return header[25] if len(header) == 26 and header[12:16] == b"IHDR" else None


def composite_over_black(rgba: np.ndarray) -> np.ndarray:
    """``H x W x 4`` uint8 RGBA over black, as dlib assigns an ``rgb_alpha_pixel`` to a zeroed ``rgb_pixel``.

    Source: ``dlib/pixel.h``, ``assign(rgb, rgb_alpha)``: ``dest += ((src - dest) * alpha) >> 8`` unless
    ``alpha == 255`` (then ``dest = src``), with ``dest = 0``. Returns ``H x W x 3`` uint8.
    """
    colour = rgba[..., :3].astype(np.uint16)
    alpha = rgba[..., 3:].astype(np.uint16)
    blended = ((colour * alpha) >> 8).astype(np.uint8)
    return np.where(alpha == 255, rgba[..., :3], blended)


def check_mode(image, name: str = "image") -> None:
    """Raise :class:`InputError` naming ``name`` (the file) unless :func:`rgb8` reads a Pillow image of this mode:
    floating-point samples (a float TIFF or PFM) and the like are refused from the header, before any pixel is
    decoded."""
    if image.mode not in READABLE_MODES:
        raise InputError(f"{name}: images of mode {image.mode} ({image.format or 'unknown format'}) cannot be read "
                         f"as 8-bit RGB")


def rgb8(image, name: str = "image") -> np.ndarray:
    """A decoded Pillow image as ``H x W x 3`` uint8 RGB, as dlib reads it (see the module docstring).

    Raises
    ------
    InputError
        For a mode dlib cannot read either (floating-point samples), naming ``name`` (the file).
    """
    check_mode(image, name)
    mode = image.mode
    if mode in _WIDE_GREY:
        samples = np.asarray(image)
        grey = (np.clip(samples.astype(np.int64), 0, 65535) >> 8).astype(np.uint8)
        return np.repeat(grey[..., None], 3, axis=2)
    if mode in _GREY_ALPHA or (mode == "RGBA" and _png_colour_type(image) == PNG_GREY_ALPHA):
        # Pillow opens 16-bit grey + alpha as RGBA with R = G = B
        return np.asarray(image.getchannel(0).convert("RGB"))
    transparent = "transparency" in image.info and mode in ("P", "RGB")
    if mode in _ALPHA or transparent:
        return composite_over_black(np.asarray(image.convert("RGBA")))
    return np.asarray(image.convert("RGB"))
