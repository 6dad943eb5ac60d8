"""The public API of ``dcnn/__init__.py`` and the doctests of the public modules."""

import doctest
import importlib
import inspect
from pathlib import Path

import pytest

import dcnn

PACKAGE = Path(dcnn.__file__).parent
#: Every module with an example in a docstring: a new example runs without anyone listing it here (the list once
#: named four modules and left the example of ``Forward`` unrun).
DOCTESTED = sorted(".".join(("dcnn", *path.relative_to(PACKAGE).with_suffix("").parts)).removesuffix(".__init__")
                   for path in PACKAGE.rglob("*.py") if ">>> " in path.read_text())


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


def test_the_public_api_and_its_examples_are_doctested():
    assert {"dcnn", "dcnn.exec.forward", "dcnn.network.zoo"} <= set(DOCTESTED)


@pytest.mark.parametrize("name", ["get_model", "load_weights", "choose_plan", "Forward", "FaceDetector.load",
                                  "FaceDetector.detect"])
def test_the_public_api_is_documented_with_parameters_and_results(name):
    """numpydoc sections, so a reader finds shapes and units without reading the code."""
    owner, _, member = name.partition(".")
    target = getattr(getattr(dcnn, owner), member) if member else getattr(dcnn, name)
    doc = inspect.getdoc(target)
    assert "Parameters\n----------" in doc
    assert inspect.isclass(target) or "Returns\n-------" in doc
