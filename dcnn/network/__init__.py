"""The network as data: layer specs, window arithmetic, the layer chain with shapes and costs, zoo, weights."""
