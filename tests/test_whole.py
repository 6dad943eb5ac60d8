"""The engine of a rank alone (batch and single mode): the compiled network on whole images, timed per node."""

import numpy as np

from dcnn.exec.forward import Forward
from dcnn.network.weights import init_weights
from dcnn.network.zoo import get_model
from dcnn.parallel.whole import WholeEngine


def test_a_whole_engine_runs_the_network_and_counts_each_layers_seconds(rng):
    network = get_model("lenet5")
    forward = Forward(network, init_weights(network, 0))
    engine = WholeEngine(forward)
    x = rng.standard_normal((3, 1, 32, 32)).astype(np.float32)
    np.testing.assert_array_equal(engine(x), forward(x))
    engine(x)
    seconds = engine.stats.compute_seconds
    assert seconds.shape == (len(network),) and (seconds >= 0).all()
    convolutions = [index for index, (_, layer) in enumerate(network.layers) if type(layer).__name__ == "Conv2d"]
    assert all(seconds[index] > 0 for index in convolutions)
    assert not engine.stats.wait_seconds.any() and not engine.stats.bytes_sent.any()
    engine.close()
    np.testing.assert_array_equal(engine(x), forward(x))  # closing frees nothing it needs
