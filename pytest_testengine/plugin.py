"""pytest hooks of pytest-testengine (entry point ``testengine``; ``-p no:testengine`` turns
it off).

The settings are resolved once, in ``pytest_configure``, and kept in ``config.stash``.  Only
when recording is on (``--testengine`` or ``--testengine-output``) does the plugin register its
objects (see :mod:`pytest_testengine.recording`); otherwise it costs nothing: no thread, no
socket, no per-test hook.  With pytest-xdist, workers only tag their reports (once some test
has tags) and the controller records and sends every result once.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import TYPE_CHECKING

import pytest

from pytest_testengine import hookspecs, options
from pytest_testengine.ci import detect
from pytest_testengine.config import ConfigError, Settings, resolve
from pytest_testengine.tags import MARKER_HELP

if TYPE_CHECKING:
    from pytest_testengine.recording import Recorder
    from pytest_testengine.sharding import SplitSpec
    from pytest_testengine.tagging import Tagger

SETTINGS = pytest.StashKey[Settings]()
RECORDER: pytest.StashKey[Recorder] = pytest.StashKey()
TAGGER: pytest.StashKey[Tagger] = pytest.StashKey()


def pytest_addhooks(pluginmanager: pytest.PytestPluginManager) -> None:
    pluginmanager.add_hookspecs(hookspecs)


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("testengine", "test results streaming (pytest-testengine)")
    options.add_options(group, parser)


def settings_of(config: pytest.Config) -> Settings:
    """Resolve the settings of this session from its command line, environment and ini."""
    cli = {opt.name: getattr(config.option, opt.dest, None) for opt in options.OPTIONS}
    ini = {opt.ini: config.getini(opt.ini) for opt in options.OPTIONS if opt.ini}
    return resolve(cli, os.environ, ini, detect(os.environ))


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", MARKER_HELP)
    try:
        settings = settings_of(config)
    except ConfigError as exc:
        if config.option.help:
            return
        raise pytest.UsageError(str(exc)) from None
    config.stash[SETTINGS] = settings
    split = _split_spec(config, settings)
    if settings.active and not config.option.collectonly:
        _register_recording(config, settings, waits_for_plan=split is not None)
    if split is not None:
        _register_sharder(config, settings, split)


def _split_spec(config: pytest.Config, settings: Settings) -> SplitSpec | None:
    """The split of this session (None: not a shard); a bad combination is a usage error."""
    if settings.split_index is None and settings.split_total is None:
        return None  # not a shard: skip importing the plan client and tenacity
    from pytest_testengine.sharding import split_spec

    xdist = getattr(config.option, "dist", "no") != "no" or hasattr(config, "workerinput")
    try:
        return split_spec(settings, xdist=xdist)
    except ConfigError as exc:
        if config.option.help:
            return None
        raise pytest.UsageError(str(exc)) from None


def _register_sharder(config: pytest.Config, settings: Settings, split: SplitSpec) -> None:
    from pytest_testengine import sharder

    recorder = config.stash.get(RECORDER, None)
    sharder.install(config, settings, split, recorder.set_shard if recorder else None)


def _register_recording(config: pytest.Config, settings: Settings, *, waits_for_plan: bool) -> None:
    from pytest_testengine import tagging

    tagger = tagging.Tagger(config.pluginmanager)
    config.stash[TAGGER] = tagger
    config.pluginmanager.register(tagger, "testengine-tagger")
    # on an xdist worker, tags travel on the reports; results are sent from the main process
    # or the controller (only imported there: the sender and transport cost imports)
    if not hasattr(config, "workerinput"):
        from pytest_testengine import recording

        recorder = recording.Recorder(config, settings)
        recorder.wait_for_plan = waits_for_plan
        config.stash[RECORDER] = recorder
        recorder.register()


@pytest.fixture
def testengine_tags(request: pytest.FixtureRequest) -> Callable[..., None]:
    """Add tags to the result of the current test, at run time.

    ``testengine_tags(team="api")`` or ``testengine_tags("team", "api")``; values are
    converted with ``str()``.  These win over marker and hook tags of the same key.
    """
    tagger = request.config.stash.get(TAGGER, None)
    # recording off: the tags go nowhere, the test runs the same
    tags = tagger.runtime_tags(request.node.nodeid) if tagger is not None else {}

    def add(key: str | None = None, value: object = None, /, **more: object) -> None:
        if key is not None:
            tags[str(key)] = str(value)
        tags.update({k: str(v) for k, v in more.items()})

    return add
