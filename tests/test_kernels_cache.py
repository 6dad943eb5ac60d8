"""Cache sizes: sysconf first, sysfs next, a default last."""

import pytest

from dcnn.kernels import cache


@pytest.fixture(autouse=True)
def _fresh_cache():
    cache.cache_bytes.cache_clear()
    cache.reported_bytes.cache_clear()
    yield
    cache.cache_bytes.cache_clear()
    cache.reported_bytes.cache_clear()


@pytest.mark.parametrize("level", [1, 2, 3])
def test_sizes_are_positive_and_ordered(level):
    assert cache.cache_bytes(level) >= 4096
    assert cache.cache_bytes(1) <= cache.cache_bytes(2) <= cache.cache_bytes(3)


@pytest.mark.parametrize("text,expected", [("32K", 32 << 10), ("1024K\n", 1 << 20), ("32M", 32 << 20),
                                           ("512", 512), ("", 0), ("n/a", 0)])
def test_parse_size(text, expected):
    assert cache._parse_size(text) == expected


def test_sysfs_when_sysconf_reports_nothing(tmp_path, monkeypatch):
    monkeypatch.setattr(cache.os, "sysconf", lambda name: 0)
    monkeypatch.setattr(cache.os, "sched_getaffinity", lambda pid: set(range(64)))
    for index, (level, kind, size) in enumerate([(1, "Data", "48K"), (1, "Instruction", "32K"),
                                                  (2, "Unified", "2048K"), (3, "Unified", "105M")]):
        folder = tmp_path / f"index{index}"
        folder.mkdir()
        (folder / "level").write_text(f"{level}\n")
        (folder / "type").write_text(f"{kind}\n")
        (folder / "size").write_text(f"{size}\n")
    monkeypatch.setattr(cache, "_SYSFS", tmp_path)
    assert [cache.cache_bytes(level) for level in (1, 2, 3)] == [48 << 10, 2 << 20, 105 << 20]


def test_default_when_nothing_is_readable(tmp_path, monkeypatch):
    def unavailable(name):
        raise ValueError(name)

    monkeypatch.setattr(cache.os, "sysconf", unavailable)
    monkeypatch.setattr(cache, "_SYSFS", tmp_path / "missing")
    assert cache.cache_bytes(2) == cache.DEFAULT_BYTES[2]


def test_bad_level():
    with pytest.raises(ValueError, match="cache level"):
        cache.cache_bytes(4)


def test_l3_counts_at_most_its_share_per_core(tmp_path, monkeypatch):
    """A virtual machine's guest reads the whole socket's L3 (300 MiB for 2 cores): counted as 4 MiB per core."""
    monkeypatch.setattr(cache.os, "sysconf", lambda name: 300 << 20 if name == "SC_LEVEL3_CACHE_SIZE" else 1 << 20)
    monkeypatch.setattr(cache.os, "sched_getaffinity", lambda pid: {0, 1})
    assert cache.cache_bytes(3) == 2 * cache.L3_PER_CORE_BYTES
    assert cache.cache_bytes(2) == 1 << 20
    assert cache.reported_bytes(3) == 300 << 20
    cache.cache_bytes.cache_clear()
    monkeypatch.setattr(cache.os, "sched_getaffinity", lambda pid: set(range(128)))
    assert cache.cache_bytes(3) == 300 << 20
