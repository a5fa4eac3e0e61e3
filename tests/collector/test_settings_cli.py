"""Settings resolution and the ``testengine-collector`` command line (in process)."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from collector_server.__main__ import main, refuse_open_bind
from collector_server.auth import TokenStore, hash_token
from collector_server.errors import SettingsError
from collector_server.settings import CollectorSettings, is_loopback_host, resolve


def test_cli_beats_env_beats_default() -> None:
    env = {"TESTENGINE_COLLECTOR_PORT": "9000", "TESTENGINE_COLLECTOR_MAX_TAGS": "5"}
    settings = resolve({"port": "9100", "max_tags": None}, env)
    assert (settings.port, settings.max_tags) == (9100, 5)
    assert settings.host == "127.0.0.1"
    assert settings.max_body_bytes == CollectorSettings().max_body_bytes
    assert resolve({}, {"TESTENGINE_COLLECTOR_ACCESS_LOG": "yes"}).access_log is True
    assert resolve({"data_dir": "/x/y"}, {}).data_dir == Path("/x/y")


@pytest.mark.parametrize(
    ("cli", "env", "message"),
    [
        pytest.param(
            {"port": "http"},
            {},
            "[testengine] invalid value 'http' for --port (command line): expected a port "
            "number from 0 to 65535",
            id="port-cli",
        ),
        pytest.param(
            {},
            {"TESTENGINE_COLLECTOR_PORT": "70000"},
            "[testengine] invalid value '70000' for TESTENGINE_COLLECTOR_PORT (env): expected a "
            "port number from 0 to 65535",
            id="port-env",
        ),
        pytest.param(
            {},
            {"TESTENGINE_COLLECTOR_MAX_BODY_BYTES": "-1"},
            "[testengine] invalid value '-1' for TESTENGINE_COLLECTOR_MAX_BODY_BYTES (env): "
            "expected a positive integer",
            id="negative-limit",
        ),
        pytest.param(
            {"access_log": "maybe"},
            {},
            "[testengine] invalid value 'maybe' for --access-log (command line): expected one "
            "of 1/0, true/false, yes/no, on/off",
            id="bool",
        ),
    ],
)
def test_bad_setting_names_value_source_and_expectation(
    cli: dict[str, str], env: dict[str, str], message: str
) -> None:
    with pytest.raises(SettingsError) as info:
        resolve(cli, env)
    assert str(info.value) == message


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.5.0.1", True),
        ("::1", True),
        ("[::1]", True),
        ("localhost", True),
        ("0.0.0.0", False),
        ("10.0.0.1", False),
        ("example.org", False),
    ],
)
def test_loopback_hosts(host: str, loopback: bool) -> None:
    assert is_loopback_host(host) is loopback


def test_tokens_create_prints_the_token_once_and_stores_its_hash(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "data"
    assert main(["tokens", "create", "--tenant", "acme", "--data-dir", str(data)]) == 0
    out, err = capsys.readouterr()
    token = out.strip()
    assert token.startswith("te_")
    assert len(token) > 40
    assert err.startswith("[testengine] created a token for tenant 'acme'")
    stored = (data / "tokens.json").read_text()
    assert token not in stored
    assert hash_token(token) in stored
    assert stat.S_IMODE((data / "tokens.json").stat().st_mode) == 0o600
    assert main(["tokens", "list", "--data-dir", str(data)]) == 0
    listing = capsys.readouterr().out
    assert listing.startswith(f"acme\t{token[:7]}...\t")
    assert token not in listing


def test_tokens_create_uses_the_data_dir_from_env(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    env = {"TESTENGINE_COLLECTOR_DATA_DIR": str(tmp_path / "d")}
    assert main(["tokens", "create", "--tenant", "a"], env) == 0
    token = capsys.readouterr().out.strip()
    assert [e.digest for e in TokenStore(tmp_path / "d").load()] == [hash_token(token)]


def test_invalid_tenant_name(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["tokens", "create", "--tenant", "a/b", "--data-dir", str(tmp_path)]) == 2
    assert capsys.readouterr().err.strip() == (
        "[testengine] invalid tenant name 'a/b': expected 1 to 64 letters, digits, '.', '_' or "
        "'-', starting with a letter or digit"
    )


def test_serve_refuses_open_non_loopback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["serve", "--host", "10.1.2.3", "--data-dir", str(tmp_path)])
    assert code == 2
    err = capsys.readouterr().err
    assert err.startswith("[testengine] refusing to listen on 10.1.2.3 without tokens")
    assert f"tokens create --tenant NAME --data-dir {tmp_path}" in err


def test_serve_reports_bad_settings(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["serve"], {"TESTENGINE_COLLECTOR_MAX_TAGS": "many"}) == 2
    assert capsys.readouterr().err.strip() == (
        "[testengine] invalid value 'many' for TESTENGINE_COLLECTOR_MAX_TAGS (env): expected a "
        "positive integer"
    )


def test_corrupt_token_file_is_reported(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "tokens.json").write_text("{not json")
    assert main(["tokens", "create", "--tenant", "a", "--data-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"[testengine] token file {tmp_path / 'tokens.json'} is not valid")


def test_serve_reports_an_unusable_data_dir(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    assert main(["serve", "--data-dir", str(blocker / "data")]) == 2
    assert capsys.readouterr().err.strip() == (
        f"[testengine] cannot create the data directory {blocker / 'data'}: Not a directory; "
        "expected a writable directory: pass another one with --data-dir"
    )


def test_non_loopback_is_allowed_once_a_token_exists(tmp_path: Path) -> None:
    settings = CollectorSettings(host="0.0.0.0", data_dir=tmp_path)
    assert refuse_open_bind(settings) is not None
    TokenStore(tmp_path).create("acme")
    assert refuse_open_bind(settings) is None
