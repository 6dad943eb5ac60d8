"""The header scan: sizes of every image without decoding, and every kind of unusable file found up front."""

import h5py
import numpy as np
import pytest
from PIL import Image

from dcnn.errors import ShapeError
from dcnn.io.images import open_image_set
from dcnn.io.scan import NAMED_FILES, Skip, scan_images, unusable_message


def save(path, height, width, rng):
    Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(path)


def at_least_ten(height, width):
    if min(height, width) < 10:
        raise ShapeError(f"{height}x{width} is too small")
    return 3, height + 1, width + 2


@pytest.fixture
def bad_folder(tmp_path, rng):
    """Good images of three sizes, and one file of every unusable kind."""
    for index, (height, width) in enumerate([(12, 20), (30, 11), (12, 20), (16, 16)]):
        save(tmp_path / f"good{index}.png", height, width, rng)
    save(tmp_path / "whole.png", 40, 40, rng)
    data = (tmp_path / "whole.png").read_bytes()
    (tmp_path / "whole.png").unlink()
    (tmp_path / "truncated.png").write_bytes(data[:len(data) // 2])  # the header is intact, the data is not
    (tmp_path / "text.png").write_text("this is not a picture")
    (tmp_path / "empty.png").write_bytes(b"")
    save(tmp_path / "thumb.png", 6, 8, rng)
    return tmp_path


def test_scan_finds_every_unusable_kind_and_maps_sizes(bad_folder):
    images = open_image_set(bad_folder)
    scan = scan_images(images, at_least_ten)
    reasons = {skip.path.rsplit("/", 1)[1]: skip.reason for skip in scan.skipped}
    assert set(reasons) == {"truncated.png", "text.png", "empty.png", "thumb.png"}
    assert "cannot read image" in reasons["truncated.png"]
    # Before: Pillow's "cannot identify image file '<the path again>'" for both.
    assert reasons["text.png"] == "cannot read image (not in any image format Pillow reads)"
    assert reasons["empty.png"] == "cannot read image (empty file)"
    assert reasons["thumb.png"] == "6x8 is too small"
    assert scan.counts() == {(3, 13, 22): 2, (3, 31, 13): 1, (3, 17, 18): 1}
    assert [images.name(i).rsplit("/", 1)[1] for i in np.flatnonzero(scan.shape_of < 0)] == sorted(reasons)
    assert scan.first_index((3, 31, 13)) == [f.name for f in images.files].index("good1.png")


def test_the_scan_calls_the_model_once_per_size(tmp_path, rng):
    for index in range(6):
        save(tmp_path / f"{index}.png", 10 + index % 2, 12, rng)
    calls = []
    scan = scan_images(open_image_set(tmp_path), lambda h, w: calls.append((h, w)) or (3, h, w))
    assert sorted(calls) == [(10, 12), (11, 12)] and scan.counts() == {(3, 10, 12): 3, (3, 11, 12): 3}


def test_an_hdf5_set_is_probed_once(tmp_path):
    path = tmp_path / "set.h5"
    with h5py.File(path, "w") as handle:
        handle["images"] = np.zeros((50, 8, 9, 3), np.uint8)
    calls = []
    scan = scan_images(open_image_set(path), lambda h, w: calls.append(1) or (3, h, w))
    assert calls == [1] and scan.counts() == {(3, 8, 9): 50}
    small = scan_images(open_image_set(path), at_least_ten)
    assert len(small.skipped) == 50 and small.skipped[7].path.endswith("set.h5:images[7]") and not small.shapes


def test_the_refusal_names_the_first_files_and_counts_the_rest():
    skipped = [Skip(i, f"/d/{i}.png", "broken") for i in range(NAMED_FILES + 4)]
    message = unusable_message("/d", skipped, 100)
    assert message.startswith(f"/d: {NAMED_FILES + 4} of 100 images cannot be used (/d/0.png: broken;")
    assert f"/d/{NAMED_FILES - 1}.png" in message and f"/d/{NAMED_FILES}.png" not in message
    assert "and 4 more" in message and "--skip-unreadable" in message and "\n" not in message
