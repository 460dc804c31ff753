"""Running batches beside live traffic: the share of the rate limits kept for live calls, batch cost
in the usage API and the dashboard, the email at a batch's end, retention, a Redis restart mid-batch
and files on an S3-compatible server. Real worker and gateway processes, real Redis, SMTP and S3."""

import re
import subprocess
import sys
import time
from datetime import timedelta
from decimal import Decimal

import boto3
import openai
import orjson
import pytest
from aiosmtpd.controller import Controller

from tests.conftest import free_port, start_gateway, wait_for, wait_until
from tests.routing.test_batches_api import Worker, billed, chat_lines, finished, jsonl, upload
from tests.usage.conftest import Inbox


@pytest.fixture()
def worker_env(gateway_env):
    from gateway_project.celery import app

    app.control.purge()
    return {**gateway_env, "BATCH_CHUNK_LINES": "20", "BATCH_LEASE_SECONDS": "3"}


@pytest.fixture()
def inbox():
    """A real SMTP server on loopback, for the worker to mail to."""
    mail = Inbox()
    controller = Controller(mail, hostname="127.0.0.1", port=free_port())
    controller.start()
    yield mail, f"smtp://127.0.0.1:{controller.port}"
    controller.stop()


def create(client, lines: list[dict], **extra):
    return client.batches.create(input_file_id=upload(client, lines).id, endpoint="/v1/chat/completions",
                                 completion_window="24h", **extra)


def ask(client, n: int):
    return client.chat.completions.create(model="gpt-test", messages=[{"role": "user", "content": f"live {n}"}])


def test_live_calls_keep_their_share_of_the_limit_while_a_batch_runs(key_client, worker_env, tenant):
    from routing.batches.tasks import resume_batches
    from usage.models import Limit, UsageRecord

    Limit.objects.create(tenant=tenant, requests_per_minute=12)
    worker = Worker({**worker_env, "BATCH_LIMIT_SHARE": "0.5"})
    try:
        batch = create(key_client, chat_lines(9))
        # The batch fills its half of the minute's 12 requests, and waits.
        waiting = wait_until(lambda: (b := key_client.batches.retrieve(batch.id)).paused_reason and b, timeout=60)
        assert waiting.paused_reason == "rate_limit_exceeded" and waiting.status == "in_progress"
        assert waiting.request_counts.completed == 6
        # Live calls of the same tenant still get the other half...
        for n in range(6):
            assert ask(key_client, n).choices[0].message.content
        # ...and nothing beyond the limit.
        with pytest.raises(openai.RateLimitError):
            ask(key_client, 6)
        # Once the minute has moved on, the batch runs its last lines.
        done = wait_until(lambda: resume_batches.delay() and (b := key_client.batches.retrieve(batch.id)).status
                          == "completed" and b, timeout=150, interval=3)
    finally:
        worker.stop()
    assert done and (done.request_counts.completed, done.request_counts.failed) == (9, 0)
    assert wait_until(lambda: len(billed(batch.id)) == 9, timeout=20)
    admitted = sorted(UsageRecord.objects.filter(tenant=tenant, http_status=200).values_list("created_at", flat=True))
    assert len(admitted) == 15
    for moment in admitted:  # never more than 12 in any minute (59 s: a margin for clocks read apart)
        assert sum(moment - timedelta(seconds=59) < other <= moment for other in admitted) <= 12


def test_a_batch_that_asked_mails_its_end_and_its_cost_shows_per_tenant(key_client, worker_env, inbox, owner, api_key,
                                                                        client):
    from usage.models import UsageRecord

    mail, smtp_url = inbox
    owner.email = "owner@acme.example"
    owner.save()
    row = api_key[0]
    row.allowed_models = ["gpt-test"]
    row.save()
    worker = Worker({**worker_env, "EMAIL_URL": smtp_url})
    try:
        ask(key_client, 0)
        lines = chat_lines(30) + chat_lines(2, model="embed-test", prefix="forbidden")
        batch = create(key_client, lines, metadata={"notify": "owners", "job": "nightly"})
        done = finished(key_client, batch.id)
        assert (done.status, done.request_counts.completed, done.request_counts.failed) == ("completed", 30, 2)
        assert wait_until(lambda: mail.messages, timeout=60)
        records = wait_until(lambda: (r := list(UsageRecord.objects.filter(batch_id=batch.id))) and len(r) == 32 and r,
                             timeout=20)
        spent = sum((r.cost_usd for r in records), Decimal(0))
        assert spent > 0
        wait_until(lambda: len(mail.messages) > 1, timeout=3)  # each slot asks for the mail: it goes once
    finally:
        worker.stop()
    [(to, message)] = mail.messages
    assert to == ["owner@acme.example"]
    assert batch.id in message["subject"] and "completed" in message["subject"]
    body = message.get_content()
    assert re.search(r"Succeeded:\s+30\b", body) and re.search(r"Failed:\s+2\b", body)
    assert Decimal(re.search(r"Cost:\s+([0-9.]+) USD", body).group(1)) == spent
    assert done.error_file_id in body and done.output_file_id in body

    client.force_login(owner)
    by_tenant = client.get("/api/usage/summary", {"batch": "any", "group_by": "tenant"}).json()
    assert [(g["tenant"], g["requests"], Decimal(g["cost_usd"])) for g in by_tenant["groups"]] == [("acme", 32, spent)]
    live = client.get("/api/usage/summary", {"batch": "none"}).json()["totals"]
    assert live["requests"] == 1
    by_batch = {g["batch"]: g for g in client.get("/api/usage/summary", {"group_by": "batch"}).json()["groups"]}
    assert by_batch[batch.id]["requests"] == 32 and Decimal(by_batch[batch.id]["cost_usd"]) == spent
    assert by_batch[""]["requests"] == 1
    listed = client.get("/api/usage/records", {"batch": batch.id, "page_size": 100}).json()["results"]
    assert len(listed) == 32 and {r["batch_id"] for r in listed} == {batch.id}

    dashboard = client.get("/admin/dashboard/data").json()
    [row] = dashboard["by"]["batch"]
    assert (row["name"], row["requests"], Decimal(row["cost_usd"])) == ("Acme", 32, spent)
    assert dashboard["by"]["tenant"][0]["requests"] == 33
    only_batches = client.get("/admin/dashboard/data", {"batch": "any"}).json()
    assert only_batches["totals"]["requests"] == 32 and Decimal(only_batches["totals"]["cost_usd"]) == spent


def test_a_batch_mails_only_the_tenants_own_people(key_client, member):
    with pytest.raises(openai.BadRequestError) as refused:
        create(key_client, chat_lines(1), metadata={"notify": "someone@elsewhere.example"})
    assert "someone@elsewhere.example" in refused.value.body["message"]
    assert key_client.batches.list().data == []
    member.email = "member@acme.example"
    member.save()
    assert create(key_client, chat_lines(1), metadata={"notify": "Member@acme.example"}).id


def _finished_batch(tenant, key, lines: int, ended_days_ago: float):
    from django.utils import timezone

    from routing.batches import files, runner
    from routing.batches.models import Batch, BatchLine

    batch = runner.create(key, files.upload(tenant.id, "in.jsonl", "batch", jsonl(chat_lines(lines))),
                          "/v1/chat/completions", "24h", None)
    assert runner.validate(batch)
    for line in BatchLine.objects.filter(batch=batch):
        line.done, line.ok = True, line.number != 1
        line.result = {"custom_id": line.custom_id, "response": {"status_code": 200 if line.ok else 400}}
        line.save()
    runner.finalize(batch)
    Batch.objects.filter(pk=batch.pk).update(completed_at=timezone.now() - timedelta(days=ended_days_ago))
    return Batch.objects.get(pk=batch.pk)


def test_finished_batches_and_their_files_go_after_their_retention(transactional_db, tenant, api_key, settings):
    from keys.auth import info_for
    from routing.batches import files, runner, tasks
    from routing.batches.models import Batch, BatchLine, File
    from usage.models import UsageRecord

    settings.BATCH_RETENTION_DAYS = 7
    key = info_for(type(api_key[0]).objects.select_related("tenant").get(pk=api_key[0].pk))
    old, recent = _finished_batch(tenant, key, 5, 8), _finished_batch(tenant, key, 5, 6)
    running = runner.create(key, files.upload(tenant.id, "in.jsonl", "batch", jsonl(chat_lines(2))),
                            "/v1/chat/completions", "24h", None)
    Batch.objects.filter(pk=running.pk).update(created_at=running.created_at - timedelta(days=30))
    UsageRecord.objects.create(request_id=f"{old.id}-req-1", created_at=old.created_at, tenant=tenant,
                               endpoint="chat.completions", public_model="gpt-test", batch_id=old.id)
    old_files = list(File.objects.filter(pk__in=[old.input_file_id, old.output_file_id, old.error_file_id]))
    assert len(old_files) == 3 and all(files.storage().exists(f.storage_name) for f in old_files)

    assert tasks.cleanup_batches() == 1  # the Beat task, once
    assert not Batch.objects.filter(pk=old.pk).exists() and not BatchLine.objects.filter(batch_id=old.id).exists()
    assert not File.objects.filter(pk__in=[f.id for f in old_files]).exists()
    assert not any(files.storage().exists(f.storage_name) for f in old_files)
    kept = File.objects.filter(pk__in=[recent.input_file_id, recent.output_file_id, recent.error_file_id])
    assert kept.count() == 3 and all(files.storage().exists(f.storage_name) for f in kept)
    assert Batch.objects.filter(pk__in=[recent.pk, running.pk]).count() == 2
    assert BatchLine.objects.filter(batch=recent).count() == 5
    assert UsageRecord.objects.filter(batch_id=old.id).count() == 1  # the ledger keeps what was billed
    assert tasks.cleanup_batches() == 0  # a second run finds nothing more

    from gateway_project.schedules import SCHEDULES

    assert any(task == "routing.batches.tasks.cleanup_batches" for task, _, _ in SCHEDULES.values())


def test_a_redis_restart_mid_batch_leaves_every_line_answered_and_billed_once(own_redis, gateway_env, mock_provider,
                                                                              api_key):
    from celery import Celery

    from routing.batches.models import BatchLine

    env = {**gateway_env, "REDIS_URL": own_redis.url, "BATCH_CHUNK_LINES": "20", "BATCH_LEASE_SECONDS": "3"}
    gateway = start_gateway(env)
    worker = Worker(env)
    broker = Celery(broker=own_redis.url, set_as_current=False)  # later tests keep the suite's app
    try:
        client = openai.OpenAI(base_url=gateway.url + "/v1", api_key=api_key[1], max_retries=3, timeout=20)
        assert wait_until(lambda: any(m.id == "gpt-test" for m in client.models.list()), timeout=20)
        batch = create(client, chat_lines(300))
        assert wait_until(lambda: BatchLine.objects.filter(batch_id=batch.id, done=True).count() >= 40, timeout=60)
        own_redis.stop()  # the worker is mid-batch: its slots lose Redis, the broker and their leases
        time.sleep(3)
        assert BatchLine.objects.filter(batch_id=batch.id, done=False).exists()
        own_redis.start()
        # The beat job does this every 30 s; a slot's lease is 3 s here.
        assert wait_until(lambda: broker.send_task("routing.batches.tasks.resume_batches") and not BatchLine.objects
                          .filter(batch_id=batch.id, done=False).exists(), timeout=120, interval=4), worker.output()[-3000:]
        done = finished(client, batch.id)
        assert done.status == "completed" and done.request_counts.completed == 300
        output = [orjson.loads(o) for o in client.files.content(done.output_file_id).content.splitlines()]
        ids = wait_until(lambda: (b := billed(batch.id)) and len(b) >= 300 and b, timeout=30)
    finally:
        worker.stop()
        gateway.stop()
        broker.close()
    assert sorted(o["custom_id"] for o in output) == sorted(f"req-{n}" for n in range(300))  # each answered once
    assert sorted(ids) == sorted(f"{batch.id}-req-{n}" for n in range(300))  # each billed once


@pytest.fixture()
def s3_server(tmp_path):
    """moto's S3-compatible server on a loopback port, with a bucket."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)], cwd=tmp_path,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(url + "/moto-api/", proc)
        s3 = boto3.client("s3", endpoint_url=url, aws_access_key_id="gw-test", aws_secret_access_key="gw-test-secret",
                          region_name="us-east-1")
        s3.create_bucket(Bucket="gateway-files")
        yield url, s3
    finally:
        proc.terminate()
        proc.wait()


def test_files_and_batch_results_live_in_s3_when_configured(s3_server, gateway_env, mock_provider, api_key,
                                                           worker_env):
    url, s3 = s3_server
    env = {**worker_env, "FILES_S3_BUCKET": "gateway-files", "FILES_S3_ENDPOINT_URL": url,
           "FILES_S3_PREFIX": "gw", "FILES_S3_REGION": "us-east-1", "FILES_S3_ACCESS_KEY_ID": "gw-test",
           "FILES_S3_SECRET_ACCESS_KEY": "gw-test-secret"}
    gateway = start_gateway(env)
    worker = Worker(env)
    try:
        client = openai.OpenAI(base_url=gateway.url + "/v1", api_key=api_key[1], max_retries=0, timeout=20)
        assert wait_until(lambda: any(m.id == "gpt-test" for m in client.models.list()), timeout=20)
        data = jsonl(chat_lines(5))
        uploaded = client.files.create(file=("in.jsonl", data), purpose="batch")
        stored = {o["Key"]: o["Size"] for o in s3.list_objects_v2(Bucket="gateway-files").get("Contents", [])}
        assert list(stored.values()) == [len(data)] and next(iter(stored)).startswith("gw/files/")
        assert client.files.content(uploaded.id).content == data
        batch = client.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions",
                                      completion_window="24h")
        done = finished(client, batch.id)
        assert done.status == "completed"
        output = client.files.content(done.output_file_id).content
        assert len(output.splitlines()) == 5
        assert len(s3.list_objects_v2(Bucket="gateway-files")["Contents"]) == 2
        spare = client.files.create(file=("spare.jsonl", data), purpose="batch")
        assert len(s3.list_objects_v2(Bucket="gateway-files")["Contents"]) == 3
        client.files.delete(spare.id)
        assert len(s3.list_objects_v2(Bucket="gateway-files")["Contents"]) == 2
    finally:
        worker.stop()
        gateway.stop()



def test_deleting_a_tenant_takes_its_batches_and_files_stored_bytes_included(transactional_db, tenant, api_key):
    from keys.auth import info_for
    from routing.batches import files
    from routing.batches.models import Batch, File

    key = info_for(type(api_key[0]).objects.select_related("tenant").get(pk=api_key[0].pk))
    batch = _finished_batch(tenant, key, 3, 0)
    names = list(File.objects.filter(tenant=tenant).values_list("storage_name", flat=True))
    assert len(names) == 3 and all(files.storage().exists(n) for n in names)
    tenant.delete()  # a file a batch was made from is kept with the batch, not against its tenant's deletion
    assert not Batch.objects.filter(pk=batch.pk).exists() and not File.objects.filter(tenant_id=tenant.id).exists()
    assert not any(files.storage().exists(n) for n in names)
