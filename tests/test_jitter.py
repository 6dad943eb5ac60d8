"""dlib's num_jitters: its random generator, jittered chips equal to dlib.jitter_image, jittered descriptors."""

import importlib.util
import subprocess
import sys

import numpy as np
import pytest

from dcnn.faces.jitter import DlibRand, jitter_chip, jittered_chips

HAVE_DLIB = importlib.util.find_spec("dlib") is not None
needs_dlib = pytest.mark.skipif(not HAVE_DLIB, reason="needs dlib-bin (the test extra)")


def test_rand_is_mt19937_after_ten_thousand_draws():
    rand = DlibRand()
    reference = np.random.RandomState(5489)
    words = reference.randint(0, 2**32, size=10004, dtype=np.uint64)[10000:]  # MT19937's 32-bit outputs in order
    expected = [((int(words[i]) & 0xFFFFFF) * 2**24 + (int(words[i + 1]) & 0xFFFFFF)) / (2**48 - 1 + 0.05)
                for i in (0, 2)]
    assert [rand.random_double(), rand.random_double()] == expected
    assert -3 <= DlibRand().double_in_range(-3, 3) < 3


def test_jitter_keeps_size_and_is_reproducible(rng):
    chip = rng.integers(0, 256, (150, 150, 3), dtype=np.uint8)
    first, again = jittered_chips(chip, 3), jittered_chips(chip, 3)
    assert first.shape == (3, 150, 150, 3) and np.array_equal(first, again)
    assert not np.array_equal(first[0], first[1])
    assert jitter_chip(chip, DlibRand()).shape == chip.shape


@needs_dlib
def test_jittered_chips_equal_dlibs(tmp_path, rng):
    """dlib.jitter_image keeps one static generator per process, so dlib runs in a fresh interpreter."""
    chip = rng.integers(0, 256, (150, 150, 3), dtype=np.uint8)
    np.save(tmp_path / "chip.npy", chip)
    script = ("import dlib, numpy as np, sys; chip = np.load(sys.argv[1]); "
              "np.save(sys.argv[2], np.array(dlib.jitter_image(chip, 5)))")
    subprocess.run([sys.executable, "-c", script, str(tmp_path / "chip.npy"), str(tmp_path / "dlib.npy")],
                   check=True)
    assert np.array_equal(jittered_chips(chip, 5), np.load(tmp_path / "dlib.npy"))
