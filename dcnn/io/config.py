"""Reading TOML configuration files (cluster and sweep files) with one clear error for any problem."""

from __future__ import annotations

from pathlib import Path
from typing import Any

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

from dcnn.errors import InputError

__all__ = ["read_toml"]


def read_toml(path: str | Path, kind: str) -> dict[str, Any]:
    """The table in a TOML file; ``kind`` names the file in errors (e.g. ``"cluster file"``).

    Raises
    ------
    InputError
        If the file cannot be read or is not valid TOML.
    """
    try:
        return tomllib.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError) as error:
        raise InputError(f"cannot read the {kind} {path}: {error}") from None
    except tomllib.TOMLDecodeError as error:
        raise InputError(f"{path}: not valid TOML ({error})") from None
