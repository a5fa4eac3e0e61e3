"""pytest-testengine: record every test execution and stream it to a collector."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from importlib.machinery import ModuleSpec, PathFinder
from types import ModuleType
from typing import Final

__version__ = "0.1.0"
#: Version of the wire format (see :mod:`pytest_testengine.model`, which re-exports it); kept
#: here so that the plugin writes batches and output files without importing the model.
SCHEMA_VERSION: Final = 1


class OwnModules:
    """Finds this package's modules with Python's own path finder, ahead of any other.

    pytest parses and compiles every module of an installed plugin again, to rewrite its
    asserts (none of ours needs that: no user calls an assert of this package), and it keeps
    the result only where it may write bytecode: with ``PYTHONDONTWRITEBYTECODE=1``, as on many
    CI images, or in a fresh environment, that is 20-25 ms of every run and of every xdist
    worker.  Found this way, they load from the bytecode their installation compiled."""

    prefix: Final = f"{__name__}."

    @classmethod
    def find_spec(
        cls, name: str, path: Sequence[str] | None = None, target: ModuleType | None = None
    ) -> ModuleSpec | None:
        if path is None or not name.startswith(cls.prefix):
            return None
        return PathFinder.find_spec(name, path, target)


def _installed(finder: object) -> bool:
    return getattr(finder, "__qualname__", None) == "OwnModules" and (
        getattr(finder, "__module__", None) == __name__
    )


if not any(_installed(finder) for finder in sys.meta_path):  # once, even after a reload
    sys.meta_path.insert(0, OwnModules)
