"""Image sets: HDF5 datasets and folders of image files, read lazily in batches, and preprocessing.

Accepted layouts:

- an HDF5 dataset (``images`` unless ``--dataset`` names another) of ``N x H x W x C`` uint8 pixels, which
  get the model's preprocessing, or ``N x C x H x W`` float32 tensors, fed to the network as they are;
- a folder of image files in the formats of :data:`PHOTO_FORMATS` that the installed Pillow decodes (PNG, JPEG,
  BMP, GIF, TIFF, WebP, PNM, TGA, JPEG 2000; the first frame of an animation or of a multi-page file), read in
  sorted name order, converted to 8-bit RGB as dlib reads them (:mod:`dcnn.io.pixels`: any Pillow mode of 8 or 16
  bits, 16-bit samples by their high byte, alpha as dlib blends it, EXIF orientation ignored), or to luminance
  for one-channel models, and preprocessed. Its other entries (subfolders, files of other types) are left out and
  counted (:attr:`FolderImageSet.left_out`).

A one-channel model (LeNet-5) gets the luminance of those RGB pixels from :func:`luminance` alone, whichever the
source: ITU-R 601-2 in Pillow's ``L``-mode integer arithmetic, so an HDF5 set and the same images as PNG files
give the same network input, bit for bit.
"""

from __future__ import annotations

import contextlib
import functools
import os
import warnings
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from pathlib import Path

import h5py
import numpy as np

from dcnn.errors import DAMAGED_FILE_ERRORS, InputError, ShapeError
from dcnn.io.fingerprint import file_fingerprint, files_fingerprint
from dcnn.io.pixels import check_mode, rgb8
from dcnn.network.graph import Preprocessing

__all__ = [
    "PHOTO_FORMATS", "ImageSet", "image_formats", "is_image_file", "left_out_note", "luminance", "open_image",
    "open_image_set", "preprocess",
]

#: Pillow's names of the raster formats read from a folder, each with the Pillow feature (codec library) it
#: needs beyond Pillow itself, if any. Formats that Pillow only identifies (its stubs: HDF5, GRIB, ...) or decodes
#: with an outside program (EPS with Ghostscript) are not among them.
PHOTO_FORMATS = {"PNG": None, "JPEG": None, "BMP": None, "DIB": None, "GIF": None, "TIFF": None, "WEBP": "webp",
                 "PPM": None, "TGA": None, "JPEG2000": "jpg_2000"}
#: Entries of a folder named in the note on what it left out; the rest are counted.
NAMED_ENTRIES = 3
#: The kinds of entries a folder leaves out (:attr:`FolderImageSet.left_out`), in the note's order, with plurals.
LEFT_OUT_KINDS = {"subfolder": "subfolders", "file not an image": "files not images",
                  "entry neither file nor folder": "entries neither files nor folders",
                  # the kinds a --known gallery adds (dcnn.faces.pipeline.known_images)
                  "hidden entry": "hidden entries", "person folder without images": "person folders without images",
                  "folder within a person folder": "folders within person folders"}


#: Largest single image a set may declare; larger shapes come from damaged files.
MAX_IMAGE_BYTES = 1 << 30


#: ITU-R 601-2 luma weights of R, G, B in 16-bit fixed point (they sum to 65536), as Pillow's ``L`` mode.
LUMA_WEIGHTS = (19595, 38470, 7471)


def luminance(pixels: np.ndarray) -> np.ndarray:
    """The luminance of ``... x 3`` uint8 RGB pixels, as uint8 ``...``.

    ``(19595 R + 38470 G + 7471 B + 32768) >> 16``: ``0.299 R + 0.587 G + 0.114 B`` rounded to the nearest
    integer in Pillow's fixed-point arithmetic (``Image.convert("L")``, libImaging/Convert.c), the one
    conversion of every image source.
    """
    weighted = pixels.astype(np.int64) @ np.asarray(LUMA_WEIGHTS, np.int64)
    return ((weighted + (1 << 15)) >> 16).astype(np.uint8)


def preprocess(pixels: np.ndarray, preprocessing: Preprocessing) -> np.ndarray:
    """``N x H x W x C`` uint8 pixels to an ``N x C x H x W`` float32 network input.

    Raises
    ------
    ShapeError
        If the channel count matches neither the model's nor RGB (for grayscale models).
    """
    channels = pixels.shape[-1]
    expected = len(preprocessing.mean)
    if preprocessing.grayscale and channels == 3:
        pixels = luminance(pixels)[..., None]
    elif channels != expected:
        raise ShapeError(f"images have {channels} channels, the model expects {expected}")
    values = pixels.astype(np.float32) * np.float32(preprocessing.scale)
    mean = np.asarray(preprocessing.mean, dtype=np.float32)
    std = np.asarray(preprocessing.std, dtype=np.float32)
    return np.ascontiguousarray(((values - mean) / std).transpose(0, 3, 1, 2))


class ImageSet(ABC):
    """A read-only, indexable image set that reads batches on demand.

    Attributes
    ----------
    path : str
        Where the images come from.
    count : int
        Number of images.
    uniform : bool
        Every image has the same size (an HDF5 dataset), so one probe describes them all.
    """

    uniform = False

    def __init__(self, path: str, count: int):
        self.path = path
        self.count = count

    def __len__(self) -> int:
        return self.count

    @abstractmethod
    def image_shape(self, index: int) -> tuple[int, int]:
        """``(H, W)`` of image ``index``."""

    def probe(self, index: int) -> tuple[int, int]:
        """``(H, W)`` of image ``index`` from its header, after a check that its file is whole (no pixels decoded).

        Raises
        ------
        InputError
            If the image cannot be read.
        """
        return self.image_shape(index)

    def name(self, index: int) -> str:
        """Where image ``index`` comes from, for messages and the result file."""
        return f"{self.path}[{index}]"

    def read_at(self, indices: Sequence[int], preprocessing: Preprocessing | None) -> np.ndarray:
        """Equally sized images at ascending ``indices`` as one batch: the network input (:meth:`read`), or with
        ``preprocessing=None`` the RGB pixels (:meth:`read_pixels`); consecutive indices are read together."""
        parts, first = [], 0
        for last in range(1, len(indices) + 1):
            if last == len(indices) or indices[last] != indices[last - 1] + 1:
                start, stop = indices[first], indices[last - 1] + 1
                parts.append(self.read_pixels(start, stop) if preprocessing is None
                             else self.read(start, stop, preprocessing))
                first = last
        return np.concatenate(parts)

    @abstractmethod
    def read(self, start: int, stop: int, preprocessing: Preprocessing) -> np.ndarray:
        """Images ``start`` to ``stop`` as one ``(B, C, H, W)`` float32 network input."""

    @abstractmethod
    def read_pixels(self, start: int, stop: int) -> np.ndarray:
        """Images ``start`` to ``stop`` as ``(B, H, W, 3)`` uint8 RGB (gray images are replicated)."""

    @abstractmethod
    def fingerprint(self) -> str:
        """The content fingerprint of the set's file or files (:mod:`dcnn.io.fingerprint`)."""

    def require_pixels(self) -> None:  # noqa: B027 - folders of images can always serve pixels
        """Raise :class:`InputError` unless :meth:`read_pixels` can serve these images (folders always can)."""

    def close(self) -> None:  # noqa: B027 - sets without open files have nothing to release
        """Release open files."""

    def __enter__(self) -> ImageSet:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class Hdf5ImageSet(ImageSet):
    """Images in one HDF5 dataset (see the module docstring for the layouts)."""

    uniform = True

    def __init__(self, path: str, dataset: str):
        try:
            self._file = h5py.File(path, "r")
        except DAMAGED_FILE_ERRORS as error:
            raise InputError(f"{path}: not a readable HDF5 file ({error})") from None
        try:
            self._open(path, dataset)
        except DAMAGED_FILE_ERRORS as error:
            self._file.close()
            raise InputError(f"{path}: damaged HDF5 file ({type(error).__name__}: {error})") from None
        except BaseException:
            self._file.close()
            raise
        self.file = path
        super().__init__(f"{path}:{dataset}", self._data.shape[0])

    def _open(self, path: str, dataset: str) -> None:
        """Find and check the dataset (h5py's errors for damaged metadata are left to the caller)."""
        if dataset not in self._file or not isinstance(self._file[dataset], h5py.Dataset):
            names = [str(name) for name, item in self._file.items() if isinstance(item, h5py.Dataset)]
            raise InputError(f"{path}: no dataset {dataset!r} (datasets here: {', '.join(names) or 'none'}; "
                             f"choose one with --dataset)")
        self._data = self._file[dataset]
        shape, dtype = self._data.shape, self._data.dtype
        if len(shape) != 4:
            raise InputError(f"{path}:{dataset} has shape {shape}; expected N x H x W x C uint8 "
                             f"or N x C x H x W float32")
        if dtype == np.uint8:
            self.channels_last = True
        elif dtype == np.float32:
            self.channels_last = False
        else:
            raise InputError(f"{path}:{dataset} has dtype {dtype}; expected uint8 (N x H x W x C) "
                             f"or float32 (N x C x H x W)")
        if float(np.prod(shape[1:], dtype=np.float64)) * dtype.itemsize > MAX_IMAGE_BYTES:
            raise InputError(f"{path}:{dataset}: images of shape {shape[1:]} exceed {MAX_IMAGE_BYTES >> 30} GiB "
                             f"each; is the file damaged?")

    def fingerprint(self) -> str:
        return file_fingerprint(self.file)

    def image_shape(self, index: int) -> tuple[int, int]:
        shape = self._data.shape
        return (shape[1], shape[2]) if self.channels_last else (shape[2], shape[3])

    @property
    def channels(self) -> int:
        """Channels per image."""
        return self._data.shape[3] if self.channels_last else self._data.shape[1]

    def _block(self, start: int, stop: int) -> np.ndarray:
        try:
            return self._data[start:stop]
        except DAMAGED_FILE_ERRORS as error:
            raise InputError(f"{self.path}: cannot read images {start}..{stop - 1} ({error})") from None

    def read(self, start: int, stop: int, preprocessing: Preprocessing) -> np.ndarray:
        block = self._block(start, stop)
        if self.channels_last:
            return preprocess(block, preprocessing)
        finite = np.isfinite(block).reshape(len(block), -1).all(axis=1)
        if not finite.all():  # NaN logits for it otherwise, silently (checked as read: no second pass over the set)
            raise InputError(f"{self.name(start + int(np.argmin(finite)))}: the image holds NaN or infinite values")
        return np.ascontiguousarray(block)

    def require_pixels(self) -> None:
        if not self.channels_last or self.channels not in (1, 3):
            raise InputError(f"{self.path}: the face detector needs N x H x W x 3 (or x 1) uint8 images")

    def read_pixels(self, start: int, stop: int) -> np.ndarray:
        self.require_pixels()
        block = self._block(start, stop)
        return np.repeat(block, 3, axis=3) if block.shape[3] == 1 else block

    def close(self) -> None:
        self._file.close()


class FolderImageSet(ImageSet):
    """The image files of a folder (:func:`is_image_file`), in sorted name order.

    Attributes
    ----------
    left_out : dict of str to list of str
        The folder's other entries by kind (``subfolder``, ``file not an image``, ``entry neither file nor
        folder``: a broken link, a socket), their names sorted; see :meth:`left_out_note`.
    """

    def __init__(self, path: str):
        super().__init__(path, 0)
        files, self.left_out = [], {}
        for entry in sorted(Path(path).iterdir()):
            if is_image_file(entry):
                files.append(entry)
            else:
                kind = ("subfolder" if entry.is_dir() else "file not an image" if entry.is_file()
                        else "entry neither file nor folder")
                self.left_out.setdefault(kind, []).append(entry.name)
        if not files:
            skipped = self.left_out_note()
            raise InputError(f"{path}: no image files ({', '.join(image_formats())}) in this folder"
                             + (f"; {skipped}" if skipped else ""))
        self.files, self.count = files, len(files)
        self._sizes: dict[int, tuple[int, int]] = {}

    def left_out_note(self) -> str | None:
        """``"skipped 3 entries of photos/: 2 subfolders (a, b), 1 file not an image (notes.txt)"``
        (:func:`left_out_note` of this folder); ``None`` when every entry is an image file."""
        return left_out_note(self.path, self.left_out)

    def _open(self, index: int):
        return open_image(self.files[index])

    def fingerprint(self) -> str:
        return files_fingerprint(self.files)

    def _header(self, index: int, verify: bool) -> tuple[int, int]:
        """``(H, W)`` from the file's header, without decoding pixels; with ``verify`` its structure is checked too
        (Pillow's ``verify``: for PNG every chunk's CRC up to IEND, which finds truncated and altered files)."""
        from PIL import Image

        try:
            with Image.open(self.files[index]) as image:
                width, height = image.size
                check_mode(image, str(self.files[index]))
                if verify:
                    image.verify()
        except _image_errors() as error:
            raise _unreadable(self.files[index], error) from None
        self._sizes[index] = (height, width)
        return height, width

    def image_shape(self, index: int) -> tuple[int, int]:
        return self._sizes[index] if index in self._sizes else self._header(index, verify=False)

    def probe(self, index: int) -> tuple[int, int]:
        return self._header(index, verify=True)

    def name(self, index: int) -> str:
        return str(self.files[index])

    def _rgb(self, index: int) -> np.ndarray:
        """Image ``index`` as ``H x W x 3`` uint8 RGB, read as dlib reads it (:func:`dcnn.io.pixels.rgb8`)."""
        return rgb8(self._open(index), str(self.files[index]))

    def read_pixels(self, start: int, stop: int) -> np.ndarray:
        return self._stack([self._rgb(i) for i in range(start, stop)], start, stop)

    def _stack(self, arrays: list[np.ndarray], start: int, stop: int) -> np.ndarray:
        shapes = {a.shape for a in arrays}
        if len(shapes) > 1:
            raise ShapeError(f"{self.path}: images {start}..{stop - 1} differ in size ({sorted(shapes)}); "
                             f"a batch needs one size")
        return np.stack(arrays)

    def read(self, start: int, stop: int, preprocessing: Preprocessing) -> np.ndarray:
        return preprocess(self.read_pixels(start, stop), preprocessing)


@functools.cache
def _suffixes() -> dict[str, str]:
    """File name suffix (lower case, with its dot) to format, for the formats of :data:`PHOTO_FORMATS` that the
    installed Pillow decodes: those it registers, with the codec library each needs (Pillow's ``features``)."""
    from PIL import Image, features

    available = {name for name, feature in PHOTO_FORMATS.items() if feature is None or features.check(feature)}
    return {suffix: name for suffix, name in sorted(Image.registered_extensions().items()) if name in available}


def left_out_note(folder: str | os.PathLike, left_out: Mapping[str, Sequence[str]]) -> str | None:
    """One line on the entries of ``folder`` that a scan left out: ``"skipped 3 entries of photos/: 2 subfolders
    (a, b), 1 file not an image (notes.txt)"``.

    Parameters
    ----------
    folder : str or path
        The folder scanned, as the note names it.
    left_out : mapping of str to sequence of str
        The entries left out by kind (a key of :data:`LEFT_OUT_KINDS`), in the order to name them.

    Returns
    -------
    str or None
        The kinds in the order of :data:`LEFT_OUT_KINDS`, naming the first :data:`NAMED_ENTRIES` of each and
        counting the rest; ``None`` when nothing was left out.
    """
    if not any(left_out.values()):
        return None
    parts = []
    for kind, plural in LEFT_OUT_KINDS.items():
        names = left_out.get(kind, [])
        if names:
            named = ", ".join(names[:NAMED_ENTRIES]) + (f" and {len(names) - NAMED_ENTRIES} more"
                                                        if len(names) > NAMED_ENTRIES else "")
            parts.append(f"{len(names)} {kind if len(names) == 1 else plural} ({named})")
    total = sum(map(len, left_out.values()))
    return f"skipped {total} {'entry' if total == 1 else 'entries'} of {folder}: {', '.join(parts)}"


def image_formats() -> list[str]:
    """The formats read from a folder (:data:`PHOTO_FORMATS` that the installed Pillow decodes), by Pillow's
    names, in the order of :data:`PHOTO_FORMATS`."""
    formats = set(_suffixes().values())
    return [name for name in PHOTO_FORMATS if name in formats]


def is_image_file(path: Path) -> bool:
    """Whether ``path`` is a file named as an image of :func:`image_formats` (by its suffix, in any case: a
    damaged or mislabelled file is found by the header scan, :mod:`dcnn.io.scan`)."""
    return path.suffix.lower() in _suffixes() and path.is_file()


def _image_errors() -> tuple[type[BaseException], ...]:
    """What Pillow raises for a file that is no image it can decode: a damaged or unknown file, and a header
    declaring more pixels than Pillow's safety limit (``DecompressionBombError``, an ``Exception`` of its own: it
    ended a run with a traceback). Pillow's warning below that limit is silenced: a size the planner checks."""
    from PIL import Image, UnidentifiedImageError

    warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)
    return (*DAMAGED_FILE_ERRORS, UnidentifiedImageError, Image.DecompressionBombError)


def _unreadable(path: str | os.PathLike, error: BaseException) -> InputError:
    """The one-line error for an image file that Pillow cannot read (``error``, one of :func:`_image_errors`): an
    empty file, a file in no format Pillow reads (a text file named ``.jpg``; Pillow's own message only repeats
    the path), or Pillow's reason (a truncated file, a decompression bomb)."""
    from PIL import UnidentifiedImageError

    with contextlib.suppress(OSError):
        if os.path.getsize(path) == 0:
            return InputError(f"{path}: cannot read image (empty file)")
    if isinstance(error, UnidentifiedImageError):
        return InputError(f"{path}: cannot read image (not in any image format Pillow reads)")
    return InputError(f"{path}: cannot read image ({error or type(error).__name__})")


def open_image(path: str | os.PathLike):
    """One image file, decoded (a PIL image).

    Raises
    ------
    InputError
        If the file cannot be read or decoded.
    """
    from PIL import Image

    try:
        image = Image.open(path)
        image.load()
    except _image_errors() as error:
        raise _unreadable(path, error) from None
    return image


def open_image_set(path: str | os.PathLike, dataset: str = "images") -> ImageSet:
    """Open an HDF5 file or an image folder.

    Raises
    ------
    InputError
        If the path does not exist or holds no usable images.
    """
    path = str(path)
    if os.path.isdir(path):
        return FolderImageSet(path)
    if not os.path.exists(path):
        raise InputError(f"input {path!r} does not exist")
    if not h5py.is_hdf5(path):
        raise InputError(f"{path}: not an HDF5 file or a folder of images")
    return Hdf5ImageSet(path, dataset)
