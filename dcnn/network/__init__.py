"""The network as data: layer specifications, the layer chain/graph with shape inference and costs, the model zoo and weight files."""
