"""The image sets shipped with dcnn (``data/faces.h5``, ``data/samples.h5``), found in a checkout and when installed.

A checkout (or an editable install) reads them from ``data/`` next to the package. ``pip install .`` copies them
into the environment's data folder as ``share/dcnn/`` (setup.cfg's ``data_files``), so an installed dcnn runs its
default job from any directory.
"""

from __future__ import annotations

import sys
import sysconfig
from pathlib import Path

from dcnn.errors import InputError

__all__ = ["BUNDLED", "bundled_data", "data_folders"]

#: The files shipped with the package.
BUNDLED = ("faces.h5", "samples.h5")


def data_folders() -> list[Path]:
    """Where the bundled files may be, in order: the checkout's ``data/``, then ``share/dcnn`` of the installation
    prefix that holds this package (``<prefix>/lib/pythonX.Y/site-packages/dcnn``: a venv, ``--user`` or
    ``--prefix``), of the environment's data path and of the interpreter's prefix."""
    here = Path(__file__).resolve().parents
    installed = [here[5]] if len(here) > 5 else []  # a checkout may sit too close to / to have a prefix above
    roots = [*installed, Path(sysconfig.get_path("data")), Path(sys.prefix)]
    return [here[2] / "data", *dict.fromkeys(root / "share" / "dcnn" for root in roots)]


def bundled_data(name: str) -> Path:
    """The path of a bundled file (``"faces.h5"``).

    Raises
    ------
    InputError
        When no folder of :func:`data_folders` holds it (an installation without its data), naming them.
    """
    for folder in data_folders():
        if (folder / name).is_file():
            return folder / name
    raise InputError(f"the bundled {name} is in none of {', '.join(map(str, data_folders()))}; reinstall dcnn "
                     f"(pip install .) or give --input")
