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
(floating-point samples, which have no fixed range) is refused from the file's header (:func:`check_mode`).

Wider and signed integer samples (TIFF, whose tags give their bits and sign, and 16-bit PNG) read by the high
byte of their range: ``(v - low) >> (bits - 8)``, ``low`` the smallest value of the sample format (0, or
``-2**(bits - 1)`` for signed samples, whose zero becomes mid-grey); 12-bit TIFF samples by their top 8 bits.
Colour with padding (``RGBX``) drops the padding; CIE L*a*b* (a TIFF of photometric interpretation 8) converts to
sRGB through littleCMS (Pillow's ``ImageCms``, D50 Lab to sRGB).

For 16-bit PNGs dlib's result is not an image: grey saturates to 255 (``assign_pixel`` clamps a ``uint16`` to
255) and colour keeps the low byte (``static_cast<uint8>``). dcnn reads them as their 8-bit equivalents
instead: the high byte of each sample (libpng's ``png_set_strip_16``, and what Pillow does for 16-bit colour),
then the rules above. The PNG specification stores data of fewer significant bits (12-bit scans, ``sBIT``) scaled
to the full 16-bit range, so the high byte is right for them too. EXIF orientation is ignored, as dlib ignores it.
"""

from __future__ import annotations

import functools

import numpy as np

from dcnn.errors import InputError

__all__ = ["check_mode", "composite_over_black", "rgb8"]

#: Pillow modes of 16- and 32-bit integer grey samples (a 16-bit grey PNG opens as one of them; Pillow before 10
#: opened a signed 16-bit TIFF as one of the ``S`` modes, later ones open it as ``I``).
_WIDE_GREY = ("I;16", "I;16B", "I;16L", "I;16N", "I", "I;16S", "I;16BS", "I;16LS")
#: TIFF tags (TIFF 6.0, sections 8 and 19): bits per sample, and the sample format, 2 for signed integers.
_BITS_PER_SAMPLE, _SAMPLE_FORMAT, _SIGNED = 258, 339, 2
#: Modes whose alpha channel (or transparency) dlib ignores: grey + alpha.
_GREY_ALPHA = ("LA", "La")
#: PNG colour type of grey + alpha (PNG specification, 11.2.2).
PNG_GREY_ALPHA = 4
#: Modes converted by Pillow exactly as dlib converts them.
_PLAIN = ("1", "L", "RGB", "RGBX", "CMYK", "YCbCr", "P")
#: CIE L*a*b* (converted to sRGB by :func:`_lab_to_srgb`).
_LAB = "LAB"
#: Modes with an alpha channel composited over black.
_ALPHA = ("RGBA", "RGBa", "PA")
#: Every mode :func:`rgb8` reads.
READABLE_MODES = frozenset((*_WIDE_GREY, *_GREY_ALPHA, *_ALPHA, *_PLAIN, _LAB))


def _tag(image, tag: int) -> int | None:
    """The first value of a TIFF tag of ``image`` (``None`` for other images or an absent tag)."""
    value = getattr(image, "tag_v2", {}).get(tag) if image.format == "TIFF" else None
    return value[0] if isinstance(value, tuple) and value else value


def integer_format(image) -> tuple[int, bool]:
    """``(bits, signed)`` of a grey image's integer samples.

    From a TIFF's ``BitsPerSample`` and ``SampleFormat`` tags (12-bit samples open in 16-bit modes, signed ones in
    ``I``); else from the Pillow mode: the ``S`` modes are signed 16-bit, ``L`` is 8-bit and the other wide ones
    are 16-bit (a 16-bit PNG, the only other source of ``I``). Bits below 8 count as 8 (Pillow scales them).
    """
    signed = _tag(image, _SAMPLE_FORMAT) == _SIGNED or image.mode.endswith("S")
    bits = _tag(image, _BITS_PER_SAMPLE) or (8 if image.mode == "L" else 16)
    return max(8, int(bits)), signed


def grey8(samples: np.ndarray, bits: int, signed: bool) -> np.ndarray:
    """Integer grey samples of ``bits`` bits as uint8: ``(v - low) >> (bits - 8)``, ``low`` the format's smallest
    value (0, or ``-2**(bits - 1)`` when ``signed``), values outside the format clipped to it. ``H x W`` in, out."""
    if signed and samples.dtype == np.uint8:
        samples = samples.view(np.int8)  # Pillow opens a signed 8-bit TIFF as L, its bytes unchanged
    if not signed and bits == 32 and samples.dtype == np.int32:
        samples = samples.view(np.uint32)  # and an unsigned 32-bit one as I (int32), its bits unchanged
    low = -(1 << (bits - 1)) if signed else 0
    shifted = np.clip(samples.astype(np.int64) - low, 0, (1 << bits) - 1)
    return (shifted >> (bits - 8)).astype(np.uint8)


@functools.cache
def _lab_to_srgb():
    """littleCMS's transform of Pillow's ``LAB`` images (D50 L*a*b*, a and b offset by 128) to sRGB."""
    from PIL import ImageCms

    return ImageCms.buildTransform(ImageCms.createProfile("LAB"), ImageCms.createProfile("sRGB"), "LAB", "RGB")


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
    bits, signed = integer_format(image)
    if mode in _WIDE_GREY or (mode == "L" and signed):
        return np.repeat(grey8(np.asarray(image), bits, signed)[..., None], 3, axis=2)
    if mode == _LAB:
        from PIL import ImageCms

        return np.asarray(ImageCms.applyTransform(image, _lab_to_srgb()))
    if mode in _GREY_ALPHA or (mode == "RGBA" and _png_colour_type(image) == PNG_GREY_ALPHA):
        # Pillow opens 16-bit grey + alpha as RGBA with R = G = B
        return np.asarray(image.getchannel(0).convert("RGB"))
    transparent = "transparency" in image.info and mode in ("P", "RGB")
    if mode in _ALPHA or transparent:
        return composite_over_black(np.asarray(image.convert("RGBA")))
    return np.asarray(image.convert("RGB"))
