"""pytest hooks of pytest-testengine (entry point ``testengine``)."""

from __future__ import annotations
