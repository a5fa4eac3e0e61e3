"""The collector as a real process: durability across kill -9, tenants, safe binding."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from tests.collector.batches import GZIP_JSON, JSON, batch, body, encode, gzip_bomb
from tests.support.collector import CollectorFactory, CollectorProcess, collector_env, free_port


def test_batch_survives_kill_9_right_after_202(collector: CollectorProcess) -> None:
    sent = batch(50, suite="crash")
    response = collector.post_batch(sent, gzipped=True)
    assert response.status_code == 202, response.text
    assert response.json() == {"accepted": 50}
    collector.kill()  # no shutdown code runs: only what was durable at the 202 survives
    collector.start()
    stored = collector.wait_for_results(50, suite="crash")
    assert sorted(r["id"] for r in stored) == sorted(r.id for r in sent.results)
    assert len(stored) == 50
    assert collector.runs("crash")[0]["total"] == 50


def test_restart_resumes_without_duplicates(collector: CollectorProcess) -> None:
    first = batch(20, suite="s")
    assert collector.post_batch(first).status_code == 202
    collector.wait_for_results(20, suite="s")
    assert collector.stop() in (0, -signal.SIGTERM)  # uvicorn re-raises SIGTERM once done
    assert "Application shutdown complete" in collector.output()
    collector.start()
    second = batch(5, suite="s")
    assert collector.post_batch(second).status_code == 202
    assert collector.post_batch(first).status_code == 202  # a client retrying an old batch
    stored = collector.wait_for_results(25, suite="s")
    assert len(stored) == 25
    assert len({r["id"] for r in stored}) == 25


def test_tenants_are_isolated(collector: CollectorProcess) -> None:
    token_a = collector.create_token("acme")
    token_b = collector.create_token("globex")
    assert collector.get("/v1/suites").status_code == 401  # tokens exist: no open access
    assert collector.post_batch(batch(3, suite="shared"), token=token_a).status_code == 202
    assert collector.post_batch(batch(2, suite="shared"), token=token_b).status_code == 202
    assert len(collector.wait_for_results(3, suite="shared", token=token_a)) == 3
    assert len(collector.wait_for_results(2, suite="shared", token=token_b)) == 2
    assert [s["results"] for s in collector.suites(token=token_a)] == [3]
    assert [s["results"] for s in collector.suites(token=token_b)] == [2]
    for path in ("/v1/suites", "/v1/suites/shared/results"):
        response = collector.get(path, token="te_not-a-token")
        assert response.status_code == 401
        assert response.json()["error"]["code"] == "invalid_token"


def test_refuses_non_loopback_bind_without_tokens(tmp_path: object) -> None:
    data_dir = f"{tmp_path}/data"
    command = [sys.executable, "-m", "collector_server", "serve", "--host", "0.0.0.0"]
    command += ["--port", str(free_port()), "--data-dir", data_dir]
    done = subprocess.run(
        command, capture_output=True, text=True, env=collector_env(), timeout=60, check=False
    )
    assert done.returncode == 2
    assert done.stderr.strip() == (
        "[testengine] refusing to listen on 0.0.0.0 without tokens: anyone who can reach it "
        "could read and write results. Create a token first with `testengine-collector tokens "
        f"create --tenant NAME --data-dir {data_dir}` and give it to clients as "
        "TESTENGINE_TOKEN, or listen on 127.0.0.1"
    )


def test_factory_passes_settings_from_env(collector_factory: CollectorFactory) -> None:
    collector = collector_factory(env={"TESTENGINE_COLLECTOR_MAX_RESULTS_PER_BATCH": "2"})
    response = collector.post_batch(batch(3))
    assert response.status_code == 413
    assert response.json()["error"]["field"] == "results"
    assert collector.get("/healthz").json() == {"status": "ok"}
    assert "testengine_http_requests_total" in collector.get("/metrics").text


def young_collections(collector: CollectorProcess) -> float:
    """The serving process's young garbage collections so far (its ``/metrics``)."""
    text = collector.get("/metrics").text
    found = re.search(r'^python_gc_collections_total\{generation="0"\} (\S+)$', text, re.M)
    assert found is not None, text[:500]
    return float(found.group(1))


def test_serve_collects_young_objects_every_100000_allocations(
    collector: CollectorProcess,
) -> None:
    # processor.settle_gc in the serving process: with Python's default (every 700
    # allocations) these 10,000 results cost about twenty young collections
    before = young_collections(collector)
    for _ in range(20):
        assert collector.post_batch(batch(500, suite="gc")).status_code == 202
    assert young_collections(collector) - before <= 2
    assert "process_resident_memory_bytes" in collector.get("/metrics").text


def test_one_collector_per_data_dir(collector: CollectorProcess) -> None:
    command = [sys.executable, "-m", "collector_server", "serve", "--port", str(free_port())]
    command += ["--data-dir", str(collector.data_dir)]
    done = subprocess.run(
        command, capture_output=True, text=True, env=collector_env(), timeout=60, check=False
    )
    assert done.returncode == 2
    assert done.stderr.strip() == (
        f"[testengine] another collector (pid {collector.proc.pid if collector.proc else '?'}) "
        f"is using the data directory {collector.data_dir}; expected one collector per data "
        "directory: stop it or pass another --data-dir"
    )
    assert collector.get("/readyz").status_code == 200


def _chunks(data: bytes, size: int = 64 << 10) -> Iterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]


LIMIT = 400_000  # --max-body-bytes of the collector below: a 128 MiB gzip bomb fits in it
BAD_BODIES = [
    pytest.param(
        lambda: gzip_bomb(128 << 20), GZIP_JSON, 413, "decompressed_too_large", id="gzip-bomb"
    ),
    pytest.param(
        lambda: encode(body(batch(2000))), JSON, 413, "body_too_large", id="over-limit-length"
    ),
    pytest.param(
        lambda: _chunks(encode(body(batch(2000)))),
        JSON,
        413,
        "body_too_large",
        id="over-limit-chunked",
    ),
    pytest.param(
        lambda: b'{"schema": 1, "run": {"run_id": "\xff"}, "results": []}',
        JSON,
        400,
        "invalid_utf8",
        id="invalid-utf8",
    ),
    pytest.param(
        lambda: encode(body(batch(1))),
        {"Content-Type": "text/plain"},
        415,
        "unsupported_media_type",
        id="wrong-content-type",
    ),
    pytest.param(lambda: b"{not json", JSON, 400, "invalid_json", id="malformed-json"),
]


@pytest.fixture(scope="module")
def limited(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CollectorProcess]:
    """One real collector with a small body limit, shared by the bad-input cases."""
    process = CollectorProcess(
        tmp_path_factory.mktemp("limited") / "data", args=["--max-body-bytes", str(LIMIT)]
    )
    process.start()
    try:
        yield process
    finally:
        process.stop()


@pytest.mark.parametrize(("make", "headers", "status", "code"), BAD_BODIES)
def test_bad_input_to_the_real_server_is_a_4xx_and_the_server_carries_on(
    limited: CollectorProcess,
    make: Callable[[], Any],
    headers: dict[str, str],
    status: int,
    code: str,
) -> None:
    with httpx.Client(timeout=30.0) as client:
        response = client.post(limited.url + "/v1/results", content=make(), headers=headers)
        assert response.status_code == status, response.text
        assert response.headers["content-type"] == "application/json"
        assert response.json()["error"]["code"] == code
        assert client.get(limited.url + "/healthz").status_code == 200
    suite = f"after-{status}-{len(limited.suites())}"  # a suite of its own per case
    assert limited.post_batch(batch(3, suite=suite)).status_code == 202
    assert len(limited.wait_for_results(3, suite=suite)) == 3
    assert limited.running


def test_lists_default_to_1000_items_with_a_cursor(collector: CollectorProcess) -> None:
    for _ in range(3):
        assert collector.post_batch(batch(500, suite="big"), gzipped=True).status_code == 202
    collector.wait_for_results(1500, suite="big")
    first = collector.get("/v1/suites/big/results").json()
    assert len(first["items"]) == 1000
    assert first["next_cursor"]
    rest = collector.get("/v1/suites/big/results", cursor=first["next_cursor"]).json()
    assert len(rest["items"]) == 500
    assert rest["next_cursor"] is None
    ids = [r["id"] for r in first["items"] + rest["items"]]
    assert len(set(ids)) == 1500
