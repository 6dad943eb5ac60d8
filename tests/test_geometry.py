"""Geometry against brute force: which input pixels does each output pixel read?"""

import itertools

import numpy as np
import pytest
from conftest import random_array

from dcnn.decomposition import geometry
from dcnn.decomposition.geometry import Box, block_boxes, exchange_transfers, input_box, interior_box, split_extent
from dcnn.kernels.conv import conv2d
from dcnn.kernels.pool import max_pool2d
from dcnn.network.window import Window

WINDOWS = [
    Window((3, 3), (1, 1), (1, 1)), Window((11, 11), (4, 4), (2, 2)), Window((3, 3), (2, 2), (0, 0)),
    Window((5, 5), (1, 1), (2, 2), dilation=(2, 2)), Window((2, 2), (1, 1), (0, 0)), Window((4, 3), (2, 3), (1, 0)),
    Window((3, 3), (2, 2), (0, 0), ceil_mode=True), Window((1, 1), (4, 4), (0, 0)), Window((9, 9), (1, 1), (4, 4)),
]
#: Asymmetric padding (ONNX pads and SAME auto_pad).
ASYMMETRIC = [
    Window((3, 3), (2, 2), (0, 1), padding_end=(1, 0)),
    Window((3, 3), (2, 2), (1, 0), ceil_mode=True, padding_end=(0, 2)),
]
WINDOWS += ASYMMETRIC
#: A constant Pad: a one-tap window whose border outputs read nothing but padding (the brute-force box tests
#: above assume every output reads a pixel, so it joins only the numeric test).
PAD = Window((1, 1), (1, 1), (2, 0), padding_end=(1, 3))


def rows_read(o: int, k: int, s: int, d: int, p: int) -> list[int]:
    """Brute force: the input rows (possibly outside the map, i.e. padding) that output row o reads."""
    return [s * o - p + d * i for i in range(k)]


@pytest.mark.parametrize("length,parts", [(10, 3), (3, 5), (0, 2), (224, 4), (7, 7), (1, 1)])
def test_split_extent(length, parts):
    ranges = split_extent(length, parts)
    sizes = [b - a for a, b in ranges]
    assert len(ranges) == parts and sum(sizes) == length
    assert max(sizes) - min(sizes) <= 1 and sizes == sorted(sizes, reverse=True)
    assert all(ranges[i][1] == ranges[i + 1][0] for i in range(parts - 1))


@pytest.mark.parametrize("shape,dims", [((7, 9), (2, 3)), ((2, 1), (3, 2)), ((224, 224), (4, 5)), ((1, 1), (2, 2))])
def test_blocks_tile_the_map(shape, dims):
    owner = np.full(shape, -1)
    for rank, box in enumerate(block_boxes(*shape, dims)):
        region = owner[box.slices()]
        assert (region == -1).all(), "blocks overlap"
        region[...] = rank
    assert (owner >= 0).all()


@pytest.mark.parametrize("window", WINDOWS, ids=str)
@pytest.mark.parametrize("size", [(23, 19), (9, 12), (60, 61)])
def test_input_box_is_the_brute_force_bounding_box(window, size):
    padding = window.explicit_padding(*size)
    out_h, out_w = window.output_length(size[0], 0), window.output_length(size[1], 1)
    rng = np.random.default_rng(sum(size))
    for _ in range(20):
        r0, r1 = sorted(rng.integers(0, out_h + 1, 2))
        c0, c1 = sorted(rng.integers(0, out_w + 1, 2))
        out = Box(int(r0), int(r1), int(c0), int(c1))
        box, pad = input_box(out, window.kernel, window.stride, window.dilation, padding, *size)
        if out.empty:
            assert box.empty and pad == (0, 0, 0, 0)
            continue
        rows = [r for o in range(out.top, out.bottom)
                for r in rows_read(o, window.kernel[0], window.stride[0], window.dilation[0], padding[0])]
        cols = [c for o in range(out.left, out.right)
                for c in rows_read(o, window.kernel[1], window.stride[1], window.dilation[1], padding[2])]
        # The box is [first, last] clipped to the map (contiguous even where dilation skips rows)...
        assert (box.top, box.bottom) == (max(0, min(rows)), min(size[0], max(rows) + 1))
        assert (box.left, box.right) == (max(0, min(cols)), min(size[1], max(cols) + 1))
        # ...so every pixel read inside the map lies in it.
        assert all(box.top <= r < box.bottom for r in rows if 0 <= r < size[0])
        assert all(box.left <= c < box.right for c in cols if 0 <= c < size[1])
        assert pad == (max(0, -min(rows)), max(0, max(rows) + 1 - size[0]),
                       max(0, -min(cols)), max(0, max(cols) + 1 - size[1]))


@pytest.mark.parametrize("window", [*WINDOWS[:6], *ASYMMETRIC, PAD], ids=str)
def test_blockwise_conv_and_pool_equal_the_whole_map(rng, window):
    """Running the kernel on each block's input box with its padding reproduces the whole output."""
    size = (21, 26)
    x = random_array(rng, 1, 3, *size)
    weight = random_array(rng, 2, 3, *window.kernel)
    padding = window.explicit_padding(*size)
    whole_conv = conv2d(x, weight, None, window.stride, padding, window.dilation)
    whole_pool = max_pool2d(x, window.kernel, window.stride, padding, window.dilation)
    for out in block_boxes(whole_conv.shape[2], whole_conv.shape[3], (3, 2)):
        if out.empty:
            continue
        box, pad = input_box(out, window.kernel, window.stride, window.dilation, padding, *size)
        part = x[(slice(None), slice(None), *box.slices())]
        np.testing.assert_allclose(conv2d(part, weight, None, window.stride, pad, window.dilation),
                                   whole_conv[(slice(None), slice(None), *out.slices())], rtol=1e-5, atol=1e-5)
        np.testing.assert_array_equal(max_pool2d(part, window.kernel, window.stride, pad, window.dilation),
                                      whole_pool[(slice(None), slice(None), *out.slices())])


@pytest.mark.parametrize("window", WINDOWS, ids=str)
def test_interior_box_is_the_largest_self_sufficient_box(window):
    size = (40, 37)
    padding = window.explicit_padding(*size)
    out_h, out_w = window.output_length(size[0], 0), window.output_length(size[1], 1)
    held_blocks = block_boxes(*size, (2, 2))
    out_blocks = block_boxes(out_h, out_w, (2, 2))
    geometry = (window.kernel, window.stride, window.dilation, padding, *size)
    for held, out in zip(held_blocks, out_blocks):
        interior = interior_box(out, held, *geometry)
        assert out.contains(interior)
        if not interior.empty:
            assert held.contains(input_box(interior, *geometry)[0])
        for r, c in itertools.product(range(out.top, out.bottom), range(out.left, out.right)):
            self_sufficient = held.contains(input_box(Box(r, r + 1, c, c + 1), *geometry)[0])
            inside = interior.top <= r < interior.bottom and interior.left <= c < interior.right
            assert inside == self_sufficient


@pytest.mark.parametrize("dims", [(1, 4), (4, 1), (2, 3), (3, 3), (5, 4)])
@pytest.mark.parametrize("window", WINDOWS, ids=str)
def test_exchange_delivers_exactly_the_needed_pixels(dims, window):
    size = (13, 11)   # small enough that late blocks are empty and halos span several blocks
    padding = window.explicit_padding(*size)
    out_h, out_w = window.output_length(size[0], 0), window.output_length(size[1], 1)
    held = block_boxes(*size, dims)
    needed = [input_box(out, window.kernel, window.stride, window.dilation, padding, *size)[0]
              for out in block_boxes(out_h, out_w, dims)]
    transfers = exchange_transfers(held, needed)
    for dest, need in enumerate(needed):
        covered = np.zeros(size, int)
        covered[held[dest].intersect(need).slices()] += 1
        for transfer in transfers:
            if transfer.dest == dest:
                assert transfer.source != dest and held[transfer.source].contains(transfer.box)
                covered[transfer.box.slices()] += 1
        expected = np.zeros(size, int)
        expected[need.slices()] = 1
        np.testing.assert_array_equal(covered, expected)


def test_box_helpers():
    a, b = Box(0, 4, 2, 6), Box(3, 8, 5, 9)
    assert a.intersect(b) == Box(3, 4, 5, 6) and a.intersect(Box(5, 6, 0, 1)).empty
    assert a.slices(Box(0, 10, 2, 10)) == (slice(0, 4), slice(0, 4))
    assert Box(2, 1, 0, 5).area == 0 and a.contains(Box(1, 1, 0, 0))


def test_windows_that_read_only_padding():
    """Regression: padding wider than the kernel span puts whole windows outside the map."""
    x = np.arange(1, 6, dtype=np.float32).reshape(1, 1, 1, 5)
    weight = np.ones((1, 1, 1, 1), np.float32)
    whole = conv2d(x, weight, padding=(0, 0, 3, 3))
    for out in (Box(0, 1, 0, 2), Box(0, 1, 2, 6), Box(0, 1, 9, 11), Box(0, 1, 0, 11)):
        box, pad = input_box(out, (1, 1), (1, 1), (1, 1), (0, 0, 3, 3), 1, 5)
        part = conv2d(x[(slice(None), slice(None), *box.slices())], weight, padding=pad)
        np.testing.assert_array_equal(part, whole[(slice(None), slice(None), *out.slices())])


def test_bounding_box_of_difference_matches_pixels(rng):
    from dcnn.decomposition.geometry import EMPTY, bounding_box_of_difference

    for _ in range(300):
        top, left = rng.integers(0, 5, 2)
        box = Box(int(top), int(top + rng.integers(0, 8)), int(left), int(left + rng.integers(0, 8)))
        others = []
        for _ in range(rng.integers(0, 4)):
            top2, left2 = rng.integers(0, 10, 2)
            others.append(Box(int(top2), int(top2 + rng.integers(0, 8)), int(left2), int(left2 + rng.integers(0, 8))))
        pixels = {(r, c) for r in range(box.top, box.bottom) for c in range(box.left, box.right)}
        for other in others:
            pixels -= {(r, c) for r in range(other.top, other.bottom) for c in range(other.left, other.right)}
        result = bounding_box_of_difference(box, others)
        if not pixels:
            assert result == EMPTY
        else:
            rows, cols = [p[0] for p in pixels], [p[1] for p in pixels]
            assert result == Box(min(rows), max(rows) + 1, min(cols), max(cols) + 1)



def all_pairs_transfers(held: list[Box], needed: list[Box]) -> list[geometry.Transfer]:
    """Brute force: every other block against every needed box that its own block does not cover."""
    return [geometry.Transfer(source, dest, held[source].intersect(need)) for dest, need in enumerate(needed)
            if not held[dest].contains(need) for source in range(len(held))
            if source != dest and not held[source].intersect(need).empty]


@pytest.mark.parametrize("size,dims", [((9, 7), (3, 2)), ((5, 4), (7, 3)), ((30, 30), (5, 6)), ((2, 40), (1, 9))])
def test_exchange_transfers_of_a_grid_match_all_pairs(size, dims):
    """The band index (a grid of blocks, some empty) finds exactly the messages of the all-pairs rule."""
    held = block_boxes(*size, dims)
    window = Window((5, 5), (1, 1), (2, 2))
    padding = window.explicit_padding(*size)
    needed = [input_box(out, window.kernel, window.stride, window.dilation, padding, *size)[0] for out in held]
    assert exchange_transfers(held, needed) == all_pairs_transfers(held, needed)


def test_exchange_transfers_of_blocks_that_are_no_grid():
    """Blocks that do not line up in bands fall back to the all-pairs rule."""
    held = [Box(0, 2, 0, 3), Box(0, 2, 3, 6), Box(2, 4, 0, 2), Box(2, 4, 2, 6)]
    needed = [Box(0, 3, 0, 4), Box(0, 3, 2, 6), Box(1, 4, 0, 3), Box(1, 4, 1, 6)]
    transfers = exchange_transfers(held, needed)
    assert transfers == all_pairs_transfers(held, needed)
    assert geometry.Transfer(3, 0, Box(2, 3, 2, 4)) in transfers and len(transfers) == 10
