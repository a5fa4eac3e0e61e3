"""Kafka-mode settings and the ``process`` command line (in process, no broker)."""

from __future__ import annotations

import pytest

from collector_server.__main__ import main
from collector_server.errors import SettingsError
from collector_server.settings import CollectorSettings, resolve


def test_defaults_are_embedded_mode() -> None:
    settings = CollectorSettings()
    assert settings.kafka_bootstrap is None
    assert (settings.kafka_topic, settings.kafka_partitions) == ("testengine.results", 6)
    assert (settings.kafka_group, settings.kafka_option) == ("testengine-processors", ())
    assert (settings.wal_max_bytes, settings.processor) == (1 << 30, True)


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        pytest.param({"TESTENGINE_KAFKA_BOOTSTRAP": "k1:9092"}, "k1:9092", id="product-name"),
        pytest.param(
            {"TESTENGINE_COLLECTOR_KAFKA_BOOTSTRAP": "k2:9092"}, "k2:9092", id="collector-name"
        ),
        pytest.param(
            {
                "TESTENGINE_KAFKA_BOOTSTRAP": "k1:9092",
                "TESTENGINE_COLLECTOR_KAFKA_BOOTSTRAP": "k2:1",
            },
            "k2:1",
            id="collector-name-wins",
        ),
        pytest.param({"TESTENGINE_KAFKA_BOOTSTRAP": "a:1, b:2"}, "a:1,b:2", id="list"),
    ],
)
def test_bootstrap_from_the_environment(env: dict[str, str], expected: str) -> None:
    assert resolve({}, env).kafka_bootstrap == expected
    assert resolve({"kafka_bootstrap": "cli:1"}, env).kafka_bootstrap == "cli:1"


def test_kafka_options_repeat_on_the_command_line_and_split_in_the_environment() -> None:
    cli = resolve({"kafka_option": ["linger.ms=10", "security.protocol=SSL"]}, {})
    assert cli.kafka_option == (("linger.ms", "10"), ("security.protocol", "SSL"))
    env = resolve({}, {"TESTENGINE_COLLECTOR_KAFKA_OPTION": "acks=all, linger.ms = 2"})
    assert env.kafka_option == (("acks", "all"), ("linger.ms", "2"))


@pytest.mark.parametrize(
    ("text", "size"),
    [("1048576", 1 << 20), ("64MiB", 64 << 20), ("512 KiB", 512 << 10), ("2g", 2 << 30)],
)
def test_wal_limit_sizes(text: str, size: int) -> None:
    assert resolve({"wal_max_bytes": text}, {}).wal_max_bytes == size


@pytest.mark.parametrize(
    ("cli", "env", "message"),
    [
        pytest.param(
            {"kafka_bootstrap": "nohost"},
            {},
            "[testengine] invalid value 'nohost' for --kafka-bootstrap (command line): expected "
            "host:port, several separated by commas",
            id="bootstrap",
        ),
        pytest.param(
            {},
            {"TESTENGINE_KAFKA_BOOTSTRAP": "k:99999"},
            "[testengine] invalid value 'k:99999' for TESTENGINE_KAFKA_BOOTSTRAP (env): expected "
            "host:port, several separated by commas",
            id="bootstrap-env",
        ),
        pytest.param(
            {"kafka_option": ["linger.ms=5", "linger.ms"]},
            {},
            "[testengine] invalid value 'linger.ms' for --kafka-option (command line): expected "
            "librdkafka settings as key=value (e.g. linger.ms=10), got 'linger.ms'",
            id="option",
        ),
        pytest.param(
            {"kafka_topic": "results/2"},
            {},
            "[testengine] invalid value 'results/2' for --kafka-topic (command line): expected a "
            "Kafka topic name: 1 to 249 letters, digits, '.', '_' or '-'",
            id="topic",
        ),
        pytest.param(
            {},
            {"TESTENGINE_COLLECTOR_WAL_MAX_BYTES": "lots"},
            "[testengine] invalid value 'lots' for TESTENGINE_COLLECTOR_WAL_MAX_BYTES (env): "
            "expected a positive number of bytes, e.g. 1048576, 64MiB or 1GiB",
            id="wal-limit",
        ),
        pytest.param(
            {"kafka_partitions": "0"},
            {},
            "[testengine] invalid value '0' for --kafka-partitions (command line): expected a "
            "positive integer",
            id="partitions",
        ),
        pytest.param(
            {"kafka_group": "my group"},
            {},
            "[testengine] invalid value 'my group' for --kafka-group (command line): expected a "
            "consumer group name without spaces",
            id="group",
        ),
    ],
)
def test_bad_kafka_settings_name_the_setting(
    cli: dict[str, str | list[str]], env: dict[str, str], message: str
) -> None:
    with pytest.raises(SettingsError) as info:
        resolve(cli, env)
    assert str(info.value) == message


def test_process_without_a_bootstrap_is_a_one_line_usage_error(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["process"], {}) == 2
    assert capsys.readouterr().err == (
        "[testengine] `process` needs a Kafka broker: pass --kafka-bootstrap HOST:PORT or set "
        "TESTENGINE_KAFKA_BOOTSTRAP (see docs/kafka.md)\n"
    )


def test_process_reports_a_bad_value_in_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["process", "--kafka-bootstrap", "k:1", "--processor-batch", "x"], {}) == 2
    assert capsys.readouterr().err == (
        "[testengine] invalid value 'x' for --processor-batch (command line): expected a "
        "positive integer\n"
    )


def test_process_refuses_serve_only_flags_in_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["process", "--port", "80"], {})
    assert info.value.code == 2
    assert capsys.readouterr().err == (
        "[testengine] testengine-collector: unrecognized arguments: --port 80; see "
        "testengine-collector --help\n"
    )
