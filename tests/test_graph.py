"""Networks as DAGs: input lists, validation, readers, and the tensors alive along the topological order."""

import pytest

from dcnn.errors import ShapeError
from dcnn.network.graph import INPUT, GraphBuilder, Network
from dcnn.network.layers import Add, Concat, Conv2d, MaxPool2d, ReLU


def _branches():
    graph = GraphBuilder()
    stem = graph.add("stem", Conv2d(3, 4, 3, padding=1))
    graph.add("left", Conv2d(4, 4, 1), stem)
    graph.add("right", MaxPool2d(3, 1, 1), stem)
    graph.add("cat", Concat(), "left", "right", stem)
    graph.add("relu", ReLU())
    return graph.build("branches", (3, 8, 9))


def test_a_chain_needs_no_input_names():
    net = Network("chain", (("a", ReLU()), ("b", ReLU())), (1, 2, 2))
    assert net.inputs == ((INPUT,), ("a",)) and net.is_chain


def test_shapes_follow_the_named_inputs():
    net = _branches()
    assert not net.is_chain
    assert net.shapes() == [(3, 8, 9), (4, 8, 9), (4, 8, 9), (4, 8, 9), (12, 8, 9), (12, 8, 9)]
    assert net.consumers()["stem"] == [1, 2, 3]
    assert net.last_uses() == {INPUT: 0, "stem": 3, "left": 3, "right": 3, "cat": 4, "relu": 5}
    # The stem stays alive until the concatenation reads it.
    assert net.live_tensors() == [[INPUT, "stem"], ["stem", "left"], ["stem", "left", "right"],
                                  ["stem", "left", "right", "cat"], ["cat", "relu"]]


@pytest.mark.parametrize("layers,inputs,message", [
    ((("a", ReLU()),), (("b",),), "reads 'b', which is not computed before it"),
    ((("a", ReLU()), ("b", Add())), ((INPUT,), ("a",)), "takes 2 inputs, got 1"),
    ((("a", ReLU()), ("b", Concat())), ((INPUT,), ("a",)), "at least 2 inputs"),
    ((("a", ReLU()), ("a", ReLU())), None, "duplicate layer names"),
    (((INPUT, ReLU()),), None, "a layer named 'input'"),
])
def test_malformed_graphs_are_refused(layers, inputs, message):
    with pytest.raises(ValueError, match=message):
        Network("bad", layers, (1, 4, 4), inputs=inputs)


def test_shape_errors_name_the_node():
    graph = GraphBuilder()
    graph.add("a", Conv2d(3, 4, 1))
    graph.add("b", Conv2d(3, 5, 1), INPUT)
    graph.add("sum", Add(), "a", "b")
    with pytest.raises(ShapeError, match=r"layer sum \(add needs two tensors of one shape"):
        graph.build("mismatch", (3, 4, 4)).shapes()


def test_declared_map_sizes_stop_where_the_default_input_is_too_small():
    """A dynamic-size model whose default input is too small for its layers still builds: the kernels take
    their large-map choice past the first node that cannot run at the default size."""
    graph = GraphBuilder()
    graph.add("a", Conv2d(3, 4, 3, padding=1))
    graph.add("b", Conv2d(4, 4, 9))
    graph.add("c", Conv2d(4, 4, 3))
    network = graph.build("n", (3, 8, 8))
    assert network.declared_map_sizes() == [(8, 8), None, None]
