"""The exporter against a real HTTP collector on 127.0.0.1: every kind of answer is handled on
purpose (see the docstring of audit_otlp.delivery.policy), and nothing is called delivered without a 2xx."""

from __future__ import annotations

import email.utils
import gc
import logging
import time
from pathlib import Path

import httpx
import orjson
import pytest

from audit_otlp.delivery.policy import classify, parse_partial_success
from tests.helpers.collector import Collector, Reply
from tests.helpers.delivery import Sleeps, has_marker, make_batch, make_exporter, read_ndjson, sha256_hex, span_count, target_of


@pytest.mark.parametrize(
    ("status", "verdict"),
    [
        (200, "ok"),
        (202, "ok"),
        (204, "ok"),
        (429, "retry"),
        (502, "retry"),
        (503, "retry"),
        (504, "retry"),
        (500, "retry"),
        (408, "retry"),
        (None, "retry"),
        (401, "config"),
        (403, "config"),
        (404, "config"),
        (405, "config"),
        (415, "config"),
        (301, "config"),
        (307, "config"),
        (413, "too_large"),
        (400, "refused"),
        (409, "refused"),
        (422, "refused"),
    ],
)
def test_classify(status: int | None, verdict: str) -> None:
    assert classify(status) == verdict


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (b"", (0, "")),
        (b"{}", (0, "")),
        (b"not json", (0, "")),
        (b'{"partialSuccess":{"rejectedSpans":"3","errorMessage":"bad ids"}}', (3, "bad ids")),
        (b'{"partialSuccess":{"rejectedSpans":2}}', (2, "")),
        (b'{"partialSuccess":{"rejectedSpans":"0","errorMessage":"just a warning"}}', (0, "just a warning")),
        (b'{"partialSuccess":{"rejectedSpans":"x"}}', (0, "")),
    ],
)
def test_parse_partial_success(body: bytes, expected: tuple[int, str]) -> None:
    assert parse_partial_success(body) == expected


async def test_202_with_empty_body_is_full_success(tmp_path: Path) -> None:
    batch = make_batch(tmp_path, 5)
    with Collector(lambda doc, n: Reply(202, b"")) as c:
        exporter = make_exporter(tmp_path, c.endpoint)
        await exporter.start()
        outcome = await exporter.deliver(batch)
        await exporter.aclose()
    assert outcome.delivered == 5 and outcome.rejected == 0
    assert exporter.state.delivered_spans == 5


async def test_a_delivered_request_leaves_no_reference_cycle(tmp_path: Path) -> None:
    # httpx links a response and its stream both ways; left alone, every request's body (~1 MB
    # at the default batch size) lives until the cycle collector runs, and RSS follows.
    batch = make_batch(tmp_path, 5)
    with Collector(lambda doc, n: Reply(200, b"{}")) as c:
        exporter = make_exporter(tmp_path, c.endpoint)
        await exporter.start()
        await exporter.deliver(batch)  # warm up: pool and connection objects live on
        gc.collect()
        gc.disable()
        try:
            gc.set_debug(gc.DEBUG_SAVEALL)
            outcome = await exporter.deliver(batch)
            gc.collect()
            leaked = [o for o in gc.garbage if isinstance(o, (httpx.Response, httpx.Request))]
        finally:
            gc.set_debug(0)
            gc.garbage.clear()
            gc.enable()
        await exporter.aclose()
    assert outcome.delivered == 5
    assert leaked == []


async def test_partial_success_counts_rejected_and_logs_the_message(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    batch = make_batch(tmp_path, 10)
    body = b'{"partialSuccess":{"rejectedSpans":"4","errorMessage":"span too old"}}'
    with Collector(lambda doc, n: Reply(200, body)) as c:
        exporter = make_exporter(tmp_path, c.endpoint)
        await exporter.start()
        with caplog.at_level(logging.WARNING):
            outcome = await exporter.deliver(batch)
        await exporter.aclose()
        assert len(c.requests) == 1  # a partial success is never retried
    assert outcome == (6, 4, 0)
    assert exporter.state.delivered_spans == 6
    assert exporter.state.rejected_spans == 4
    assert "span too old" in caplog.text and "rejected 4 of 10" in caplog.text


@pytest.mark.parametrize("status", [429, 502, 503, 504, 500])
async def test_retryable_statuses_are_retried_until_2xx(tmp_path: Path, status: int) -> None:
    sleeps = Sleeps()
    with Collector(lambda doc, n: Reply(status, b'{"code":14}') if n <= 3 else Reply()) as c:
        exporter = make_exporter(tmp_path, c.endpoint, sleep=sleeps)
        await exporter.start()
        outcome = await exporter.deliver(make_batch(tmp_path, 3))
        await exporter.aclose()
        assert [r.status for r in c.requests] == [status, status, status, 200]
    assert outcome.delivered == 3
    assert len(sleeps.delays) == 3 and all(0 <= d <= 0.05 for d in sleeps.delays)
    assert exporter.metrics.export_retries._value.get() == 3
    assert exporter.metrics.export_requests.labels(status=str(status))._value.get() == 3


async def test_retry_after_seconds_and_http_date_are_honoured(tmp_path: Path) -> None:
    sleeps = Sleeps()
    date = email.utils.formatdate(time.time() + 7, usegmt=True)
    replies = {
        1: Reply(503, headers={"Retry-After": "3"}),
        2: Reply(429, headers={"Retry-After": date}),
        3: Reply(503, headers={"Retry-After": "100000"}),
    }
    with Collector(lambda doc, n: replies.get(n, Reply())) as c:
        exporter = make_exporter(tmp_path, c.endpoint, sleep=sleeps)
        await exporter.start()
        await exporter.deliver(make_batch(tmp_path, 1))
        await exporter.aclose()
    assert sleeps.delays[0] == 3.0
    assert 5.0 <= sleeps.delays[1] <= 7.0
    assert sleeps.delays[2] == 300.0  # capped


async def test_connection_reset_and_timeout_are_retried(tmp_path: Path) -> None:
    sleeps = Sleeps()
    replies = {1: Reply(drop_connection=True), 2: Reply(delay=1.5)}
    with Collector(lambda doc, n: replies.get(n, Reply())) as c:
        exporter = make_exporter(tmp_path, c.endpoint, sleep=sleeps, timeout=0.5)
        await exporter.start()
        outcome = await exporter.deliver(make_batch(tmp_path, 2))
        await exporter.aclose()
    assert outcome.delivered == 2
    assert len(sleeps.delays) == 2
    assert exporter.metrics.export_requests.labels(status="error")._value.get() == 2


async def test_nothing_is_claimed_while_the_collector_is_down(tmp_path: Path) -> None:
    with Collector() as c:
        endpoint = c.endpoint  # the port is closed once the collector stops
    attempts: list[float] = []

    async def sleep(delay: float) -> None:
        attempts.append(delay)
        if len(attempts) >= 5:
            raise RuntimeError("stop")

    exporter = make_exporter(tmp_path, endpoint, sleep=sleep, receipts=True)
    await exporter.start()
    with pytest.raises(RuntimeError):
        await exporter.deliver(make_batch(tmp_path, 4))
    await exporter.aclose()
    assert exporter.state.delivered_spans == 0
    assert exporter.state.delivered_spans == 0 and exporter.state.last_success_unix is None
    assert not (tmp_path / "receipts.jsonl").exists()
    assert exporter.metrics.export_requests.labels(status="error")._value.get() == 5


@pytest.mark.parametrize("status", [401, 403])
async def test_auth_errors_back_off_long_and_loudly_without_the_credential(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, status: int
) -> None:
    sleeps = Sleeps()
    with Collector(lambda doc, n: Reply(status, b'{"message":"bad key"}') if n <= 3 else Reply()) as c:
        exporter = make_exporter(
            tmp_path, c.endpoint, sleep=sleeps, auth_backoff=42.0, headers={"authorization": "Bearer SECRET-TOKEN-123"}
        )
        await exporter.start()
        with caplog.at_level(logging.DEBUG):
            outcome = await exporter.deliver(make_batch(tmp_path, 2))
        await exporter.aclose()
        assert c.requests[0].headers["authorization"] == "Bearer SECRET-TOKEN-123"
    assert outcome.delivered == 2 and outcome.dead_lettered == 0  # a config problem costs no data
    assert sleeps.delays == [42.0, 42.0, 42.0]
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1, "the loud error is rate-limited"
    assert f"127.0.0.1:{c.port}/v1/traces" in errors[0].getMessage() and str(status) in errors[0].getMessage()
    assert "SECRET-TOKEN-123" not in caplog.text


async def test_redirects_are_not_followed(tmp_path: Path) -> None:
    sleeps = Sleeps()
    with (
        Collector() as elsewhere,
        Collector(lambda doc, n: Reply(307, headers={"Location": elsewhere.endpoint}) if n == 1 else Reply()) as c,
    ):
        exporter = make_exporter(tmp_path, c.endpoint, sleep=sleeps, vendor_headers={"x-sentry-auth": "sentry sentry_key=k"})
        await exporter.start()
        await exporter.deliver(make_batch(tmp_path, 1))
        await exporter.aclose()
        assert elsewhere.requests == []
        assert len(c.requests) == 2


async def test_413_splits_down_to_one_span_and_dead_letters_a_single_too_large_span(tmp_path: Path) -> None:
    batch = make_batch(tmp_path, 16)
    big = make_batch(tmp_path, 1, pad=5000).spans[0]
    batch.spans[9] = big  # one span alone is over the collector's limit

    def responder(doc: dict, n: int) -> Reply:
        size = len(orjson.dumps(doc))
        return Reply(413, b'{"message":"too large"}') if size > 4000 else Reply()

    with Collector(responder) as c:
        exporter = make_exporter(tmp_path, c.endpoint)
        await exporter.start()
        outcome = await exporter.deliver(batch)
        await exporter.aclose()
        accepted = c.accepted_spans()
    assert outcome == (15, 0, 1)
    assert len(accepted) == 15 and all(len(orjson.dumps(s)) < 4000 for s in accepted)
    [record] = read_ndjson(tmp_path / "dead-letter.jsonl")
    assert record["status"] == 413 and record["reason"] == "too_large"
    assert record["offset"] == batch.sources[9].offset and record["line"] == batch.sources[9].line.decode()


async def test_400_bisects_and_dead_letters_exactly_the_poison_rows(tmp_path: Path) -> None:
    poison = frozenset({3, 17, 18, 40})
    batch = make_batch(tmp_path, 50, marker_seqs=poison)
    with Collector(lambda doc, n: Reply(400, b'{"code":3,"message":"poison"}') if has_marker(doc) else Reply()) as c:
        exporter = make_exporter(tmp_path, c.endpoint)
        await exporter.start()
        outcome = await exporter.deliver(batch)
        await exporter.aclose()
        delivered = {target_of(s) for s in c.accepted_spans()}
    assert outcome == (46, 0, 4)
    assert delivered == {f"src/file_{i}.py" for i in range(1, 51) if i not in poison}
    records = read_ndjson(tmp_path / "dead-letter.jsonl")
    assert sorted(orjson.loads(r["line"])["seq"] for r in records) == sorted(poison)
    for r in records:
        assert r["status"] == 400 and r["reason"] == "refused" and "poison" in r["response"]
        assert r["file"]["ino"] == 2 and r["time"].endswith("Z") and r["end"] > r["offset"]
        assert r["line_sha256"] == sha256_hex(r["line"].encode())
    assert exporter.state.dead_lettered_spans == 4
    assert exporter.state.delivered_spans == 46


async def test_dead_letter_response_body_is_truncated(tmp_path: Path) -> None:
    with Collector(lambda doc, n: Reply(400, b"e" * 20000)) as c:
        exporter = make_exporter(tmp_path, c.endpoint)
        await exporter.start()
        await exporter.deliver(make_batch(tmp_path, 1))
        await exporter.aclose()
    [record] = read_ndjson(tmp_path / "dead-letter.jsonl")
    assert len(record["response"]) < 4200 and record["response"].endswith("[truncated]")


async def test_body_over_max_request_bytes_is_split_before_sending(tmp_path: Path) -> None:
    batch = make_batch(tmp_path, 8, pad=300)
    with Collector() as c:
        exporter = make_exporter(tmp_path, c.endpoint, max_request_bytes=2500)
        await exporter.start()
        outcome = await exporter.deliver(batch)
        lone = make_batch(tmp_path, 1, pad=4000)
        lone_outcome = await exporter.deliver(lone)
        await exporter.aclose()
        sizes = [len(orjson.dumps(r.doc)) for r in c.requests]
    assert outcome.delivered == 8 and len(sizes) > 1
    assert lone_outcome.dead_lettered == 1
    assert read_ndjson(tmp_path / "dead-letter.jsonl")[0]["reason"].startswith("larger than export.max_request_bytes")


async def test_receipt_per_2xx_proves_what_was_delivered(tmp_path: Path) -> None:
    batch = make_batch(tmp_path, 12, marker_seqs=frozenset({12}))
    partial = b'{"partialSuccess":{"rejectedSpans":"1","errorMessage":"meh"}}'
    with Collector(lambda doc, n: Reply(400) if has_marker(doc) else Reply(200, partial)) as c:
        exporter = make_exporter(tmp_path, c.endpoint, receipts=True)
        await exporter.start()
        await exporter.deliver(batch)
        await exporter.aclose()
        ok_requests = c.accepted()
    receipts = read_ndjson(tmp_path / "receipts.jsonl")
    assert len(receipts) == len(ok_requests) >= 2
    assert sum(r["spans"] for r in receipts) == 11 and sum(r["rejected"] for r in receipts) == len(receipts)
    first = receipts[0]
    assert first["status"] == 200 and first["endpoint_host"] == "127.0.0.1"
    assert first["file"] == {"dev": 1, "ino": 2, "fingerprint": "ab" * 32, "fingerprint_len": 1024}
    assert first["byte_range"][0] == 0
    assert first["first_line_sha256"] == sha256_hex(batch.sources[0].line)
    covered = [s for s in batch.sources if s.offset < first["byte_range"][1]]
    assert first["byte_range"][1] == covered[-1].end
    assert first["last_line_sha256"] == sha256_hex(covered[-1].line)
    assert first["time"].endswith("Z")


async def test_gzip_and_custom_headers(tmp_path: Path) -> None:
    with Collector() as c:
        exporter = make_exporter(tmp_path, c.endpoint, compression="gzip", headers={"x-team": "audit", "api-key": "k1"})
        await exporter.start()
        await exporter.deliver(make_batch(tmp_path, 30))
        await exporter.aclose()
        [req] = c.requests
    assert req.headers["content-encoding"] == "gzip"
    assert req.headers["content-type"] == "application/json"
    assert req.headers["x-team"] == "audit" and req.headers["api-key"] == "k1"
    assert span_count(req.doc) == 30  # the collector gunzipped and parsed it as valid OTLP


async def test_durable_write_failure_holds_delivery_until_the_record_is_on_disk(tmp_path: Path) -> None:
    blocker = tmp_path / "blocked"
    blocker.write_text("a file where a directory should be")
    attempts: list[float] = []

    async def sleep(delay: float) -> None:
        attempts.append(delay)
        if len(attempts) == 3:  # the operator fixes the disk problem
            blocker.unlink()
            blocker.mkdir()

    with Collector(lambda doc, n: Reply(400)) as c:
        exporter = make_exporter(tmp_path, c.endpoint, sleep=sleep, dead_letter=blocker / "dl.jsonl")
        await exporter.start()
        outcome = await exporter.deliver(make_batch(tmp_path, 1))
        await exporter.aclose()
    assert len(attempts) == 3  # deliver() did not return (so the checkpoint could not move) before the write
    assert outcome.dead_lettered == 1
    assert len(read_ndjson(blocker / "dl.jsonl")) == 1


def test_plain_http_to_a_remote_host_warns_once(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    import asyncio

    async def start(endpoint: str) -> None:
        exporter = make_exporter(tmp_path, endpoint)
        await exporter.start()
        await exporter.aclose()

    with caplog.at_level(logging.WARNING):
        asyncio.run(start("http://collector.example.net:4318/v1/traces"))
    assert len([r for r in caplog.records if "plain http" in r.getMessage()]) == 1
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        asyncio.run(start("http://127.0.0.1:4318/v1/traces"))
        asyncio.run(start("https://collector.example.net/v1/traces"))
    assert not [r for r in caplog.records if "plain http" in r.getMessage()]
