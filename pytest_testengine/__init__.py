"""pytest-testengine: record every test execution and stream it to a collector."""

from __future__ import annotations

__version__ = "0.1.0"
