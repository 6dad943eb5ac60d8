"""The public API of ``dcnn/__init__.py`` and the doctests of the public modules."""

import doctest
import importlib

import pytest

import dcnn

DOCTESTED = ["dcnn", "dcnn.network.window", "dcnn.network.graph", "dcnn.decomposition.intervals"]


@pytest.mark.parametrize("name", DOCTESTED)
def test_doctests(name):
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0


def test_public_names_are_the_definitions():
    from dcnn.exec.forward import Forward
    from dcnn.faces.detect import FaceDetector
    from dcnn.network.weights import load_weights
    from dcnn.network.zoo import get_model
    from dcnn.planner.plan import choose_plan

    assert (dcnn.get_model, dcnn.Forward, dcnn.load_weights, dcnn.FaceDetector, dcnn.choose_plan) == \
        (get_model, Forward, load_weights, FaceDetector, choose_plan)
    assert set(dcnn.__all__) == {"FaceDetector", "Forward", "__version__", "choose_plan", "get_model", "load_weights"}
