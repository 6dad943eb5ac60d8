"""Image sets: HDF5 layouts, image folders, preprocessing, and clear errors."""

from pathlib import Path

import h5py
import numpy as np
import pytest
from PIL import Image

from dcnn.errors import InputError, ShapeError
from dcnn.exec.forward import Forward
from dcnn.io.images import luminance, open_image_set, preprocess
from dcnn.network.graph import IMAGENET, raw_pixels
from dcnn.network.weights import init_weights
from dcnn.network.zoo import MNIST, get_model


def test_preprocess_imagenet():
    pixels = np.full((1, 2, 3, 3), 255, np.uint8)
    out = preprocess(pixels, IMAGENET)
    assert out.shape == (1, 3, 2, 3) and out.dtype == np.float32
    np.testing.assert_allclose(out[0, :, 0, 0], (1 - np.array(IMAGENET.mean)) / np.array(IMAGENET.std), rtol=1e-6)


def test_raw_pixels_are_the_values_as_they_are_for_every_level():
    """``--preprocess none``: 0 to 255 exactly (scaling by 1/255 and back would round some levels)."""
    levels = np.arange(256, dtype=np.uint8)
    pixels = np.stack([levels, levels[::-1], levels], axis=-1)[None, None]
    np.testing.assert_array_equal(preprocess(pixels, raw_pixels(3))[0, :, 0], pixels[0, 0].T.astype(np.float32))
    gray = preprocess(pixels, raw_pixels(1))
    assert gray.shape == (1, 1, 1, 256)
    np.testing.assert_array_equal(gray[0, 0, 0], luminance(pixels[0, 0]).astype(np.float32))


def test_preprocess_grayscale_from_rgb():
    pixels = np.zeros((1, 4, 4, 3), np.uint8)
    pixels[..., 1] = 255
    out = preprocess(pixels, MNIST)
    assert out.shape == (1, 1, 4, 4)
    # Pillow's fixed point: (38470 * 255 + 32768) >> 16 = 150, the nearest integer to 0.587 * 255 = 149.7.
    np.testing.assert_allclose(out[0, 0, 0, 0], (150 / 255 - 0.1307) / 0.3081, rtol=1e-6)


def test_luminance_is_pillows_l_mode_for_every_gray_level_and_many_colours():
    levels = np.arange(256, dtype=np.uint8)
    np.testing.assert_array_equal(luminance(np.stack([levels] * 3, axis=-1)), levels)
    red, green, blue = np.meshgrid(levels, levels, levels[::7], indexing="ij")
    colours = np.stack([red, green, blue], axis=-1).reshape(256, -1, 3)
    np.testing.assert_array_equal(luminance(colours), np.asarray(Image.fromarray(colours).convert("L")))


def test_hdf5_and_png_copies_of_rgb_images_give_lenet_the_same_logits(tmp_path, rng):
    """Regression: HDF5 RGB sets went through float luminance, PNG files through Pillow's rounded L mode, and
    LeNet-5's logits differed by 8.7e-4."""
    pixels = rng.integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)
    with h5py.File(tmp_path / "set.h5", "w") as handle:
        handle["images"] = pixels
    folder = tmp_path / "png"
    folder.mkdir()
    for index, image in enumerate(pixels):
        Image.fromarray(image).save(folder / f"{index}.png")
    network = get_model("lenet5")
    with open_image_set(tmp_path / "set.h5") as stored, open_image_set(folder) as files:
        from_hdf5, from_png = stored.read(0, 4, MNIST), files.read(0, 4, MNIST)
    np.testing.assert_array_equal(from_hdf5, from_png)
    forward = Forward(network, init_weights(network, 5))
    np.testing.assert_array_equal(forward(from_hdf5), forward(from_png))


def test_preprocess_channel_mismatch():
    with pytest.raises(ShapeError, match="2 channels"):
        preprocess(np.zeros((1, 4, 4, 2), np.uint8), IMAGENET)


def test_hdf5_uint8_and_float32(tmp_path, rng):
    path = tmp_path / "set.h5"
    pixels = rng.integers(0, 256, (5, 6, 7, 3), dtype=np.uint8)
    tensors = rng.standard_normal((5, 3, 6, 7)).astype(np.float32)
    with h5py.File(path, "w") as handle:
        handle["images"] = pixels
        handle["tensors"] = tensors
    with open_image_set(path) as images:
        assert len(images) == 5 and images.image_shape(0) == (6, 7)
        np.testing.assert_allclose(images.read(1, 3, IMAGENET), preprocess(pixels[1:3], IMAGENET))
    with open_image_set(path, "tensors") as images:
        np.testing.assert_array_equal(images.read(0, 5, IMAGENET), tensors)


@pytest.mark.parametrize("data,match", [
    (np.zeros((2, 3, 4), np.uint8), "expected N x H x W x C"),
    (np.zeros((2, 3, 4, 3), np.int32), "dtype int32"),
])
def test_hdf5_bad_layouts(tmp_path, data, match):
    path = tmp_path / "bad.h5"
    with h5py.File(path, "w") as handle:
        handle["images"] = data
    with pytest.raises(InputError, match=match):
        open_image_set(path)


def test_hdf5_missing_dataset_lists_others(tmp_path):
    path = tmp_path / "set.h5"
    with h5py.File(path, "w") as handle:
        handle["pictures"] = np.zeros((1, 2, 2, 3), np.uint8)
    with pytest.raises(InputError, match=r"no dataset 'images'.*pictures"):
        open_image_set(path)


def test_missing_and_non_hdf5_paths(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        open_image_set(tmp_path / "nothing.h5")
    bogus = tmp_path / "bogus.h5"
    bogus.write_bytes(b"\x89HDF but not really")
    with pytest.raises(InputError, match="not an HDF5 file"):
        open_image_set(bogus)


def test_folder_of_images(tmp_path, rng):
    arrays = [rng.integers(0, 256, (8, 9, 3), dtype=np.uint8) for _ in range(3)]
    for i, array in enumerate(arrays):
        Image.fromarray(array).save(tmp_path / f"img{i}.png")
    (tmp_path / "notes.txt").write_text("ignored")
    with open_image_set(tmp_path) as images:
        assert len(images) == 3 and images.image_shape(2) == (8, 9)
        np.testing.assert_allclose(images.read(0, 3, IMAGENET), preprocess(np.stack(arrays), IMAGENET), rtol=1e-6)


def test_a_folder_reads_every_format_pillow_decodes_and_names_what_it_skips(tmp_path, rng):
    """BMP, TIFF, WebP, GIF and PNM files were left out silently (only .png/.jpg/.jpeg were listed), as were
    subfolders and other files; every lossless format now gives the PNG's pixels."""
    array = rng.integers(0, 256, (6, 7, 3), dtype=np.uint8)
    formats = {"a.png": {}, "b.BMP": {}, "c.tif": {}, "d.webp": {"lossless": True}, "e.ppm": {}, "f.tga": {}}
    for name, options in formats.items():
        Image.fromarray(array).save(tmp_path / name, **options)
    Image.fromarray(array[..., 0]).save(tmp_path / "g.gif")  # grey: a palette of the 256 levels
    (tmp_path / "notes.txt").write_text("not an image")
    (tmp_path / "raw.h5").write_bytes(b"")
    for folder in ("old", "z.png"):  # a folder named as an image is a subfolder all the same
        (tmp_path / folder).mkdir()
    with open_image_set(tmp_path) as images:
        assert [Path(name).name for name in map(images.name, range(len(images)))] == [*formats, "g.gif"]
        np.testing.assert_array_equal(images.read_pixels(0, len(formats)), np.stack([array] * len(formats)))
        np.testing.assert_array_equal(images.read_pixels(6, 7)[0], np.repeat(array[..., :1], 3, axis=2))
        assert images.left_out == {"file not an image": ["notes.txt", "raw.h5"], "subfolder": ["old", "z.png"]}
        assert images.left_out_note() == (f"skipped 4 entries of {tmp_path}: 2 subfolders (old, z.png), 2 files not "
                                          "images (notes.txt, raw.h5)")


def test_the_skip_note_names_three_entries_of_a_kind_and_counts_the_rest(tmp_path):
    Image.new("RGB", (4, 4)).save(tmp_path / "a.png")
    for index in range(5):
        (tmp_path / f"n{index}.txt").write_text("")
    (tmp_path / "dangling.jpg").symlink_to(tmp_path / "gone.jpg")
    with open_image_set(tmp_path) as images:
        assert images.left_out_note() == (f"skipped 6 entries of {tmp_path}: 5 files not images (n0.txt, n1.txt, "
                                          "n2.txt and 2 more), 1 entry neither file nor folder (dangling.jpg)")
    (tmp_path / "dangling.jpg").unlink()
    for index in range(5):
        (tmp_path / f"n{index}.txt").unlink()
    with open_image_set(tmp_path) as images:
        assert images.left_out == {} and images.left_out_note() is None


def test_a_float_image_is_refused_from_its_header(tmp_path):
    """A format read from folders may hold samples rgb8 cannot read (a float TIFF): the header scan refuses it,
    before any pixel is decoded, as it refuses a damaged file."""
    Image.fromarray(np.zeros((5, 5), np.float32)).save(tmp_path / "depth.tif")
    with open_image_set(tmp_path) as images, pytest.raises(InputError, match=r"depth.tif: images of mode F \(TIFF\)"):
        images.probe(0)


def test_folder_errors(tmp_path):
    with pytest.raises(InputError, match=r"no image files \(PNG, JPEG, BMP"):
        open_image_set(tmp_path)
    (tmp_path / "notes.txt").write_text("no image")
    with pytest.raises(InputError, match=r"no image files .*; skipped 1 entry of .*: 1 file not an image \(notes"):
        open_image_set(tmp_path)
    (tmp_path / "broken.png").write_bytes(b"not a png")
    with open_image_set(tmp_path) as images, pytest.raises(InputError, match="cannot read image"):
        images.read(0, 1, IMAGENET)


def test_a_header_beyond_pillows_pixel_limit_is_an_unreadable_image_not_a_crash(tmp_path):
    """Before: a 154-byte BMP declaring 20000 x 20000 pixels raised Pillow's DecompressionBombError, which no
    handler knew: the run ended with "unexpected failure" and a traceback. It is an unreadable file now."""
    import struct

    side = 20000
    header = b"BM" + struct.pack("<IHHI", 54 + 3 * side * side, 0, 0, 54) + struct.pack(
        "<IiiHHIIiiII", 40, side, side, 1, 24, 0, 3 * side * side, 0, 0, 0, 0)
    (tmp_path / "huge.bmp").write_bytes(header + bytes(100))
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "ok.png")
    images = open_image_set(tmp_path)
    index = [images.name(i) for i in range(len(images))].index(str(tmp_path / "huge.bmp"))
    with pytest.raises(InputError, match=r"huge\.bmp: cannot read image"):
        images.probe(index)


def test_a_float_image_holding_nan_or_infinity_is_an_unreadable_image(tmp_path):
    images = np.zeros((3, 1, 4, 4), np.float32)
    images[1, 0, 2, 2] = np.inf
    with h5py.File(tmp_path / "set.h5", "w") as handle:
        handle["images"] = images
    with open_image_set(str(tmp_path / "set.h5"), "images") as image_set:
        np.testing.assert_array_equal(image_set.read(0, 1, raw_pixels(1)), images[:1])
        with pytest.raises(InputError, match=r"set\.h5:images\[1\]: the image holds NaN or infinite values"):
            image_set.read(0, 3, raw_pixels(1))
