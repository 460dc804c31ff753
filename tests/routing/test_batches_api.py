"""The Files and Batches APIs through the openai SDK, run by a real Celery worker process on the
test Redis and database, every line through the gateway's own request path and billed once."""

import io
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import openai
import orjson
import pytest

from providers.mock_upstream.server import directive
from tests.conftest import ROOT, wait_until


def jsonl(lines: list[dict]) -> bytes:
    return b"\n".join(orjson.dumps(line) for line in lines) + b"\n"


def chat_lines(count: int, model: str = "gpt-test", prefix: str = "req") -> list[dict]:
    return [{"custom_id": f"{prefix}-{n}", "method": "POST", "url": "/v1/chat/completions",
             "body": {"model": model, "messages": [{"role": "user", "content": f"question {n}"}]}}
            for n in range(count)]


class Worker:
    """`celery worker` on the batch queue, as production runs it. Its log goes to a file: a pipe
    nobody reads would block the worker once full (a Redis outage logs a lot)."""

    def __init__(self, env: dict) -> None:
        self.log = tempfile.NamedTemporaryFile("w+", prefix="batch-worker-", suffix=".log",  # noqa: SIM115
                                               dir=os.environ["GATEWAY_DATA_DIR"], delete=False)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "gateway_project", "worker", "--pool=solo", "-Q", "batches,celery",
             "--loglevel=WARNING", "--without-heartbeat", "--without-gossip", "--without-mingle"],
            cwd=ROOT, env={**os.environ, **env}, stdout=self.log, stderr=subprocess.STDOUT)

    def output(self) -> str:
        self.log.flush()
        return Path(self.log.name).read_text()

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=30)


@pytest.fixture()
def worker_env(gateway_env):
    from gateway_project.celery import app

    app.control.purge()
    return {**gateway_env, "BATCH_CHUNK_LINES": "20", "BATCH_LEASE_SECONDS": "3"}


@pytest.fixture()
def worker(worker_env):
    started = Worker(worker_env)
    yield started
    started.stop()


def upload(client, lines: list[dict]):
    return client.files.create(file=("input.jsonl", io.BytesIO(jsonl(lines))), purpose="batch")


def finished(client, batch_id: str, timeout: float = 120):
    return wait_until(lambda: (b := client.batches.retrieve(batch_id)).status in (
        "completed", "failed", "cancelled", "expired") and b, timeout=timeout, interval=0.3)


def billed(batch_id: str) -> list[str]:
    from usage.models import UsageRecord

    return list(UsageRecord.objects.filter(request_id__startswith=batch_id + "-").values_list("request_id", flat=True))


def test_a_batch_runs_to_completed_and_each_line_is_answered_and_billed_once(key_client, worker):
    lines = chat_lines(2000)
    for n, line in enumerate(lines):  # each question gets its own answer, to match to its custom_id
        line["body"]["messages"][0]["content"] += " " + directive(say=f"answer {n}")
    uploaded = upload(key_client, lines)
    assert uploaded.purpose == "batch" and uploaded.bytes > 0
    assert uploaded.id in [f.id for f in key_client.files.list()]
    batch = key_client.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions",
                                      completion_window="24h", metadata={"job": "nightly"})
    assert batch.status == "validating"
    done = finished(key_client, batch.id)
    assert done.status == "completed", done
    assert (done.request_counts.total, done.request_counts.completed, done.request_counts.failed) == (2000, 2000, 0)
    output = [orjson.loads(line) for line in key_client.files.content(done.output_file_id).content.splitlines()]
    assert sorted(o["custom_id"] for o in output) == sorted(f"req-{n}" for n in range(2000))
    for line in output:  # each custom_id with the answer to its own question
        assert line["response"]["status_code"] == 200
        number = line["custom_id"].removeprefix("req-")
        assert line["response"]["body"]["choices"][0]["message"]["content"] == f"answer {number}"
    assert wait_until(lambda: len(billed(batch.id)) == 2000, timeout=30)
    assert key_client.batches.retrieve(batch.id).metadata == {"job": "nightly"}
    assert batch.id in [b.id for b in key_client.batches.list()]


def test_a_worker_killed_mid_batch_leaves_every_line_answered_and_billed_once(key_client, worker_env):
    from routing.batches.models import BatchLine
    from routing.batches.tasks import resume_batches

    first = Worker(worker_env)
    batch = key_client.batches.create(input_file_id=upload(key_client, chat_lines(300)).id,
                                      endpoint="/v1/chat/completions", completion_window="24h")
    try:
        assert wait_until(lambda: BatchLine.objects.filter(batch_id=batch.id, done=True).count() >= 40, timeout=60)
        first.kill()
        assert key_client.batches.retrieve(batch.id).status == "in_progress"
        second = Worker(worker_env)
        # The beat job does this every 30 s; the dead worker's lease ran out after 3 s.
        assert wait_until(lambda: resume_batches.delay() and BatchLine.objects.filter(
            batch_id=batch.id, done=False).count() == 0, timeout=90, interval=4)
        done = finished(key_client, batch.id)
    finally:
        first.stop()
        if "second" in locals():
            second.stop()
    assert done.status == "completed" and done.request_counts.completed == 300
    output = key_client.files.content(done.output_file_id).content.splitlines()
    assert sorted(orjson.loads(o)["custom_id"] for o in output) == sorted(f"req-{n}" for n in range(300))
    ids = wait_until(lambda: (b := billed(batch.id)) and len(b) == 300 and b, timeout=20)
    assert len(ids) == len(set(ids)) == 300


def test_cancel_stops_new_lines_and_keeps_the_finished_ones(key_client, worker):
    batch = key_client.batches.create(input_file_id=upload(key_client, chat_lines(600)).id,
                                      endpoint="/v1/chat/completions", completion_window="24h")
    wait_until(lambda: key_client.batches.retrieve(batch.id).request_counts.completed >= 20, timeout=60)
    assert key_client.batches.cancel(batch.id).status in ("cancelling", "cancelled")
    done = finished(key_client, batch.id)
    assert done.status == "cancelled"
    kept = key_client.files.content(done.output_file_id).content.splitlines()
    assert 20 <= len(kept) < 600 and done.request_counts.completed == len(kept)


def test_bad_lines_are_refused_at_upload_naming_the_line(key_client):
    lines = jsonl(chat_lines(3))
    broken = lines.replace(b'{"custom_id":"req-2"', b'{"custom_id":"req-2",,', 1)
    with pytest.raises(openai.BadRequestError) as refused:
        key_client.files.create(file=("bad.jsonl", io.BytesIO(broken)), purpose="batch")
    assert "Line 3 is not valid JSON" in refused.value.body["message"]
    mixed = chat_lines(2) + [{"custom_id": "e", "method": "POST", "url": "/v1/embeddings",
                              "body": {"model": "embed-test", "input": "x"}}]
    with pytest.raises(openai.BadRequestError) as refused:
        upload(key_client, mixed)
    assert "Line 3" in refused.value.body["message"] and "one endpoint per file" in refused.value.body["message"]


def test_a_file_for_another_endpoint_fails_the_batch_and_a_forbidden_model_lands_in_the_error_file(
        key_client, worker, api_key):
    embed_file = upload(key_client, [{"custom_id": "e1", "method": "POST", "url": "/v1/embeddings",
                                      "body": {"model": "embed-test", "input": "x"}}])
    failed = finished(key_client, key_client.batches.create(input_file_id=embed_file.id,
                                                            endpoint="/v1/chat/completions",
                                                            completion_window="24h").id)
    assert failed.status == "failed" and failed.errors.data[0].code == "mismatched_endpoint"
    assert failed.errors.data[0].line == 1

    row = api_key[0]
    row.allowed_models = ["gpt-test"]
    row.save()
    lines = chat_lines(3) + chat_lines(1, model="embed-test", prefix="forbidden")
    done = finished(key_client, key_client.batches.create(input_file_id=upload(key_client, lines).id,
                                                          endpoint="/v1/chat/completions",
                                                          completion_window="24h").id)
    assert done.status == "completed" and (done.request_counts.completed, done.request_counts.failed) == (3, 1)
    [error] = [orjson.loads(x) for x in key_client.files.content(done.error_file_id).content.splitlines()]
    assert error["custom_id"] == "forbidden-0" and error["response"]["status_code"] in (403, 404)
    assert error["response"]["body"]["error"]["code"]


def test_a_tenant_never_sees_another_tenants_files_or_batches(key_client, gateway, other_tenant):
    from keys import services

    mine = upload(key_client, chat_lines(1))
    _, secret = services.issue(other_tenant, "other")
    other = openai.OpenAI(base_url=gateway.url + "/v1", api_key=secret, max_retries=0)
    with pytest.raises(openai.NotFoundError):
        other.files.retrieve(mine.id)
    with pytest.raises(openai.NotFoundError):
        other.files.content(mine.id)
    with pytest.raises(openai.NotFoundError):
        other.batches.create(input_file_id=mine.id, endpoint="/v1/chat/completions", completion_window="24h")
    assert mine.id not in [f.id for f in other.files.list()]
    key_client.files.delete(mine.id)
    with pytest.raises(openai.NotFoundError):
        key_client.files.retrieve(mine.id)


def test_a_file_over_the_limit_is_refused(db, tenant, settings):
    from gateway_project.lib import errors
    from routing.batches import files

    settings.FILES_MAX_BYTES = 100
    with pytest.raises(errors.GatewayError) as refused:
        files.upload(tenant.id, "big.jsonl", "batch", jsonl(chat_lines(5)))
    assert refused.value.status == 413 and refused.value.code == "file_too_large"
    size = len(jsonl(chat_lines(5)))
    settings.FILES_MAX_BYTES, settings.FILES_TENANT_MAX_BYTES = 10_000, size * 2 - 1
    files.upload(tenant.id, "a.jsonl", "batch", jsonl(chat_lines(5)))
    with pytest.raises(errors.GatewayError) as refused:
        files.upload(tenant.id, "b.jsonl", "batch", jsonl(chat_lines(5)))
    assert refused.value.code == "storage_quota_exceeded"


def test_a_budget_reached_pauses_the_batch_and_raising_it_resumes(key_client, worker, tenant):
    from routing.batches.tasks import resume_batches
    from usage.models import Limit

    limit = Limit.objects.create(tenant=tenant, budget_usd="0.0002")
    lines = chat_lines(200)
    for line in lines:
        line["body"]["max_tokens"] = 20  # what a line reserves against the budget
    batch = key_client.batches.create(input_file_id=upload(key_client, lines).id,
                                      endpoint="/v1/chat/completions", completion_window="24h")
    paused = wait_until(lambda: (b := key_client.batches.retrieve(batch.id)).paused_reason and b, timeout=60)
    assert paused.status == "in_progress" and paused.paused_reason == "budget_exceeded"
    assert 0 < paused.request_counts.completed < 200 and paused.request_counts.failed == 0  # nothing failed
    limit.budget_usd = "100"
    limit.save()
    assert wait_until(lambda: resume_batches.delay() and key_client.batches.retrieve(batch.id).status == "completed",
                      timeout=90, interval=2)
    done = key_client.batches.retrieve(batch.id)
    assert (done.request_counts.completed, done.request_counts.failed, done.paused_reason) == (200, 0, None)


def test_the_admin_lists_batches_with_counts_and_progress(transactional_db, tenant, api_key, admin_client):
    from keys.auth import info_for
    from routing.batches import files, runner
    from routing.batches.models import BatchLine

    row = files.upload(tenant.id, "in.jsonl", "batch", jsonl(chat_lines(4)))
    key = info_for(type(api_key[0]).objects.select_related("tenant").get(pk=api_key[0].pk))
    batch = runner.create(key, row, "/v1/chat/completions", "24h", None)
    assert runner.validate(batch)
    BatchLine.objects.filter(batch=batch, number__lte=2).update(done=True, ok=True)
    BatchLine.objects.filter(batch=batch, number=3).update(done=True, ok=False, result={
        "custom_id": "req-2", "response": {"status_code": 403, "body": {"error": {
            "message": "This key may not use the model 'embed-test'.", "code": "model_not_allowed"}}}})
    batch.completed, batch.failed = 2, 1
    batch.save()
    page = admin_client.get("/admin/routing/batch/").content.decode()
    assert batch.id in page and 'value="75"' in page and "in_progress" in page
    detail = admin_client.get(f"/admin/routing/batch/{batch.id}/change/").content.decode()
    assert "req-2" in detail and "403" in detail and "may not use the model &#x27;embed-test&#x27;" in detail


def test_anthropic_message_batches_run_on_the_same_machinery(key_client, worker, gateway, api_key):
    import anthropic

    client = anthropic.Anthropic(base_url=gateway.url, api_key=api_key[1], max_retries=0)
    requests = [{"custom_id": f"m-{n}", "params": {"model": "gpt-test", "max_tokens": 50, "messages": [
                     {"role": "user", "content": f"hello {n} " + directive(say=f"answer {n}")}]}}
                for n in range(2000)] + [{"custom_id": "bad", "params": {"model": "gpt-test",
                                                                      "messages": [{"role": "user", "content": "x"}]}}]
    batch = client.messages.batches.create(requests=requests)
    assert batch.processing_status == "in_progress"
    ended = wait_until(lambda: (b := client.messages.batches.retrieve(batch.id)).processing_status == "ended" and b,
                       timeout=120, interval=0.3)
    assert (ended.request_counts.succeeded, ended.request_counts.errored) == (2000, 1)
    results = {r.custom_id: r.result for r in client.messages.batches.results(batch.id)}
    assert sorted(results) == sorted([f"m-{n}" for n in range(2000)] + ["bad"])
    assert all(results[f"m-{n}"].type == "succeeded" and results[f"m-{n}"].message.content[0].text == f"answer {n}"
               for n in range(2000))
    assert results["bad"].type == "errored"  # max_tokens is required on /v1/messages, in Anthropic's error shape
    # As on a live call, a request refused before it is authorized (a 400 at parse) records nothing.
    assert wait_until(lambda: len(billed(batch.id)) == 2000, timeout=30)
    with pytest.raises(anthropic.NotFoundError):
        client.messages.batches.retrieve("batch-nonexistent")
