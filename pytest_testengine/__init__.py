"""pytest-testengine: record every test execution and stream it to a collector."""

from __future__ import annotations

from typing import Final

__version__ = "0.1.0"
#: Version of the wire format (see :mod:`pytest_testengine.model`, which re-exports it); kept
#: here so that the plugin writes batches and output files without importing the model.
SCHEMA_VERSION: Final = 1
