"""resolve(): precedence, parsing, messages, secrets."""

from __future__ import annotations

import itertools
from typing import Any

import pytest

from pytest_testengine import options
from pytest_testengine.ci import CiInfo
from pytest_testengine.config import ConfigError, Settings, resolve
from pytest_testengine.options import Option

# A row given by every source, to check the whole order on one setting.
BRANCH = Option(
    name="branch",
    help="Branch.",
    type=options.TEXT,
    default="main",
    flag="--testengine-branch",
    env="TESTENGINE_BRANCH",
    ini="testengine_branch",
    ci="branch",
)
SOURCES = ("cli", "env", "ini", "ci")


def _given(sources: tuple[str, ...]) -> dict[str, Any]:
    return {
        "cli": {"branch": "from-cli"} if "cli" in sources else {},
        "environ": {"TESTENGINE_BRANCH": "from-env"} if "env" in sources else {},
        "ini": {"testengine_branch": "from-ini"} if "ini" in sources else {},
        "ci": CiInfo(provider="generic", branch="from-ci" if "ci" in sources else None),
    }


MATRIX = [
    pytest.param(combo, f"from-{combo[0]}" if combo else "main", id="+".join(combo) or "none")
    for n in range(len(SOURCES) + 1)
    for combo in itertools.combinations(SOURCES, n)
]


@pytest.mark.parametrize(("sources", "expected"), MATRIX)
def test_precedence_cli_env_ini_ci_default(sources: tuple[str, ...], expected: str) -> None:
    settings = resolve(**_given(sources), options=[BRANCH])
    assert settings.branch == expected
    names = {"cli": "command line", "env": "env", "ini": "ini file", "ci": "CI detection"}
    assert settings.sources["branch"] == (names[sources[0]] if sources else "default")


@pytest.mark.parametrize(
    ("cli", "environ", "ini", "expected"),
    [
        pytest.param({}, {}, {}, False, id="default-off"),
        pytest.param({"enabled": True}, {}, {}, True, id="flag"),
        pytest.param({}, {"TESTENGINE_ENABLED": "1"}, {}, True, id="env"),
        pytest.param({}, {}, {"testengine": "true"}, True, id="ini"),
        pytest.param(
            {}, {"TESTENGINE_ENABLED": "0"}, {"testengine": "true"}, False, id="env-off-beats-ini"
        ),
        pytest.param({"enabled": True}, {"TESTENGINE_ENABLED": "0"}, {}, True, id="flag-beats-env"),
        pytest.param(
            {}, {"TESTENGINE_ENABLED": ""}, {"testengine": "true"}, True, id="empty-env-not-given"
        ),
    ],
)
def test_enabling(
    cli: dict[str, Any], environ: dict[str, str], ini: dict[str, Any], expected: bool
) -> None:
    assert resolve(cli, environ, ini).enabled is expected


def test_real_table_precedence_for_a_number() -> None:
    environ = {"TESTENGINE_BATCH_SIZE": "200"}
    ini = {"testengine_batch_size": "300"}
    assert resolve({"batch_size": "100"}, environ, ini).batch_size == 100
    assert resolve({"batch_size": None}, environ, ini).batch_size == 200
    assert resolve({}, {}, ini).batch_size == 300
    assert resolve({}, {}, {}).batch_size == 1000


def test_ci_detection_fills_the_run_context_below_env() -> None:
    ci = CiInfo(provider="buildkite", build_id="b-1", branch="feature", commit="abc")
    settings = resolve({}, {"TESTENGINE_COMMIT": "def"}, {}, ci)
    assert (settings.build_id, settings.branch, settings.commit) == ("b-1", "feature", "def")
    assert settings.ci is ci
    assert settings.sources["commit"] == "env"
    assert settings.sources["build_id"] == "CI detection"


def test_tags_merge_across_sources_and_the_higher_source_wins_per_key() -> None:
    settings = resolve(
        {"tags": ["team=cli", "only_cli=1"]},
        {"TESTENGINE_TAGS": "team=env,area=env"},
        {"testengine_tags": "team=ini\narea=ini\nlevel=ini"},
    )
    assert settings.tags == {"team": "cli", "area": "env", "level": "ini", "only_cli": "1"}


def test_the_token_comes_from_env_or_ini_never_the_command_line() -> None:
    assert resolve({"token": "cli-secret"}, {}, {}).token is None
    assert resolve({}, {}, {"testengine_token": "ini-secret"}).token == "ini-secret"
    settings = resolve({}, {"TESTENGINE_TOKEN": "env-secret"}, {"testengine_token": "ini-secret"})
    assert settings.token == "env-secret"
    assert "env-secret" not in repr(settings)
    assert "token=" not in repr(settings)


def test_the_token_is_never_echoed_in_a_message() -> None:
    with pytest.raises(ConfigError) as info:
        resolve({}, {"TESTENGINE_TOKEN": "sec\tret"}, {})
    assert "sec" not in str(info.value)
    assert str(info.value) == (
        "[testengine] invalid value <hidden> for TESTENGINE_TOKEN (env): "
        "expected one line of text, not empty"
    )


@pytest.mark.parametrize(
    ("cli", "environ", "ini", "message"),
    [
        pytest.param(
            {},
            {"TESTENGINE_BATCH_SIZE": "abc"},
            {},
            "[testengine] invalid value 'abc' for TESTENGINE_BATCH_SIZE (env): "
            "expected a positive integer",
            id="batch-size-env",
        ),
        pytest.param(
            {"batch_size": "0"},
            {},
            {},
            "[testengine] invalid value '0' for --testengine-batch-size (command line): "
            "expected a positive integer",
            id="batch-size-cli",
        ),
        pytest.param(
            {},
            {},
            {"testengine_batch_size": "-5"},
            "[testengine] invalid value '-5' for testengine_batch_size (ini file): "
            "expected a positive integer",
            id="batch-size-ini",
        ),
        pytest.param(
            {},
            {"TESTENGINE_ENABLED": "sure"},
            {},
            "[testengine] invalid value 'sure' for TESTENGINE_ENABLED (env): "
            "expected one of 1, true, yes, on, 0, false, no, off",
            id="enabled",
        ),
        pytest.param(
            {"url": "localhost:8765"},
            {},
            {},
            "[testengine] invalid value 'localhost:8765' for --testengine-url (command line): "
            "expected an http:// or https:// URL such as http://127.0.0.1:8765",
            id="url",
        ),
        pytest.param(
            {},
            {"TESTENGINE_SUITE": "my suite"},
            {},
            "[testengine] invalid value 'my suite' for TESTENGINE_SUITE (env): expected 1 to "
            "128 letters, digits, '.', '_' or '-', starting with a letter or digit",
            id="suite",
        ),
        pytest.param(
            {"tags": ["team=api", "oops"]},
            {},
            {},
            "[testengine] invalid value 'team=api' 'oops' for --testengine-tag (command line): "
            "expected key=value pairs separated by commas, such as team=api,area=billing",
            id="tags-cli",
        ),
        pytest.param(
            {},
            {"TESTENGINE_FLUSH_DEADLINE": "-1"},
            {},
            "[testengine] invalid value '-1' for TESTENGINE_FLUSH_DEADLINE (env): "
            "expected a number of seconds, 0 or more (less than a day)",
            id="flush-deadline",
        ),
        pytest.param(
            {},
            {"TESTENGINE_TIMEOUT": "0"},
            {},
            "[testengine] invalid value '0' for TESTENGINE_TIMEOUT (env): "
            "expected a number of seconds above 0 (less than a day)",
            id="timeout",
        ),
    ],
)
def test_messages_name_the_setting_value_source_and_expectation(
    cli: dict[str, Any], environ: dict[str, str], ini: dict[str, Any], message: str
) -> None:
    with pytest.raises(ConfigError) as info:
        resolve(cli, environ, ini)
    assert str(info.value) == message
    assert "\n" not in message


def test_a_bad_value_in_a_lower_source_is_reported_even_when_unused_for_tags_only() -> None:
    # Merged settings read every source; single-valued ones read only the winner.
    assert resolve({"batch_size": "7"}, {"TESTENGINE_BATCH_SIZE": "abc"}, {}).batch_size == 7
    with pytest.raises(ConfigError, match="TESTENGINE_TAGS"):
        resolve({"tags": ["a=1"]}, {"TESTENGINE_TAGS": "broken"}, {})


def test_rows_added_by_other_modules_land_in_extra() -> None:
    shard_label = Option(
        name="shard_label",
        help="Shard index.",
        type=options.POSITIVE_INT,
        flag="--testengine-shard-label",
        env="TESTENGINE_SHARD_LABEL",
        ci="shard_total",
    )
    settings = resolve({"shard_label": "3"}, {}, {}, options=[*options.OPTIONS, shard_label])
    assert settings.extra == {"shard_label": 3}
    assert settings.get("shard_label") == 3
    assert settings.get("batch_size") == 1000
    settings = resolve({}, {}, {}, CiInfo(shard_total=4), options=[shard_label])
    assert settings.get("shard_label") == 4


def test_defaults_match_the_settings_class() -> None:
    resolved = resolve({}, {}, {})
    plain = Settings()
    for opt in options.OPTIONS:
        assert getattr(resolved, opt.name) == getattr(plain, opt.name), opt.name
    assert not resolved.active
    assert resolve({"output": "out.jsonl"}, {}, {}).active
