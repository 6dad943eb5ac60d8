"""Content fingerprints: the same bytes under any name agree, a change of length or of either end differs."""

import pytest

from dcnn.errors import InputError
from dcnn.io.fingerprint import END_BYTES, file_fingerprint, files_fingerprint


@pytest.mark.parametrize("size", [0, 10, END_BYTES, 3 * END_BYTES + 7])
def test_moved_files_agree_and_changed_ends_differ(tmp_path, rng, size):
    data = rng.integers(0, 256, size, dtype="uint8").tobytes()
    first, moved = tmp_path / "a.h5", tmp_path / "sub" / "b.h5"
    moved.parent.mkdir()
    first.write_bytes(data)
    moved.write_bytes(data)
    assert file_fingerprint(first) == file_fingerprint(moved) == file_fingerprint(f"{tmp_path}/./a.h5")
    assert file_fingerprint(first).startswith(f"{size}:")
    if size:
        for position in (0, size - 1):
            changed = bytearray(data)
            changed[position] ^= 1
            moved.write_bytes(bytes(changed))
            assert file_fingerprint(moved) != file_fingerprint(first)
    moved.write_bytes(data + b"\0")
    assert file_fingerprint(moved) != file_fingerprint(first)


def test_a_folder_is_known_by_its_names_and_contents(tmp_path):
    for folder in ("one", "two"):
        (tmp_path / folder).mkdir()
        for name in ("a.png", "b.png"):
            (tmp_path / folder / name).write_bytes(name.encode())
    one = files_fingerprint(sorted((tmp_path / "one").iterdir()))
    assert one == files_fingerprint(sorted((tmp_path / "two").iterdir())) and one.startswith("2 files:")
    (tmp_path / "two" / "b.png").rename(tmp_path / "two" / "c.png")
    assert files_fingerprint(sorted((tmp_path / "two").iterdir())) != one


def test_an_unreadable_file_is_one_clear_error(tmp_path):
    with pytest.raises(InputError, match="cannot read"):
        file_fingerprint(tmp_path / "missing.h5")
