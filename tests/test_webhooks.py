"""Outbound webhooks: signed deliveries to a real local receiver, retries, the outbox, the log."""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from fhir.resources.R4B.diagnosticreport import DiagnosticReport
from sqlalchemy import select, update

from api import create_app
from api.fhir import emit_specimen_signed
from db import webhooks
from db.lifecycle import claim_delivery, complete_batches, emit
from db.models import AuditEvent, DeliveryState, Webhook, WebhookDelivery, WebhookEvent
from db.session import engine_for, session_factory
from db.tenancy import DEFAULT_LAB_ID
from leukoscreen.config import resolve_secret_key
from tests.conftest import token_client
from tests.lisdata import scored_specimen, sign_specimen
from tests.reviewdata import seed_scored
from worker import runtime as worker_runtime
from worker.celery_app import WEBHOOK_TASK, make_celery
from worker.dispatch import watch_outbox
from worker.reconcile import reconcile
from worker.webhooks import BACKOFF_CAP_S, backoff_s, deliver


@dataclass
class Receiver:
    """A laboratory's endpoint: answers the statuses in ``answers`` in turn (then 200)."""

    url: str
    answers: list[int]
    received: list[tuple[dict[str, str], bytes]] = field(default_factory=list)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    state = Receiver("", [])

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 (http.server's name)
            body = self.rfile.read(int(self.headers["Content-Length"]))
            state.received.append((dict(self.headers), body))
            status = state.answers.pop(0) if state.answers else 200
            self.send_response(status)
            self.end_headers()
            self.wfile.write(b"ok" if status == 200 else b"try later")

        def log_message(self, *_: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    state.url = f"http://127.0.0.1:{server.server_address[1]}/hooks/leukoscreen"
    yield state
    server.shutdown()
    server.server_close()


@pytest.fixture
def world(db_settings):  # type: ignore[no-untyped-def]
    settings = resolve_secret_key(db_settings)
    return settings, session_factory(engine_for(settings.database_url))


def _webhook(sessions, settings, url: str, events: list[str]) -> tuple[int, str]:  # type: ignore[no-untyped-def]
    with sessions.begin() as s:
        created = webhooks.create_webhook(s, url, events, settings.secret_key, None)
        s.flush()
        return created.webhook.id, created.secret


def _emit(sessions, event=WebhookEvent.BATCH_COMPLETE, subject="b1/3") -> list[str]:  # type: ignore[no-untyped-def]
    with sessions.begin() as s:
        return emit(s, event, subject, {"batch_id": "b1"}, laboratory_id=DEFAULT_LAB_ID)


def _delivery(sessions, delivery_id: str) -> WebhookDelivery:  # type: ignore[no-untyped-def]
    with sessions() as s:
        row = s.get(WebhookDelivery, delivery_id)
        assert row is not None
        return row


def _check_signature(secret: str, headers: dict[str, str], body: bytes) -> None:
    """What a receiver does, written out independently of db.webhooks."""
    fields = dict(p.split("=", 1) for p in headers["X-LeukoScreen-Signature"].split(","))
    signed = f"{fields['t']}.".encode() + body
    expected = hmac.new(secret.encode(), signed, hashlib.sha256).hexdigest()
    assert hmac.compare_digest(expected, fields["v1"])
    assert abs(datetime.now(UTC).timestamp() - int(fields["t"])) < 60


def test_a_delivery_is_signed_retried_after_a_500_and_then_delivered(world, receiver):
    settings, sessions = world
    _, secret = _webhook(sessions, settings, receiver.url, ["batch.complete"])
    (delivery_id,) = _emit(sessions)
    receiver.answers = [500]

    first = deliver(sessions, settings.secret_key, delivery_id, 5, 8)
    second = deliver(sessions, settings.secret_key, delivery_id, 5, 8)

    assert (first.state, first.status) == (DeliveryState.PENDING, 500)
    assert (second.state, second.status) == (DeliveryState.DELIVERED, 200)
    assert len(receiver.received) == 2
    for headers, body in receiver.received:
        _check_signature(secret, headers, body)
        assert webhooks.verify(secret, headers["X-LeukoScreen-Signature"], body)
        assert headers["X-LeukoScreen-Delivery"] == delivery_id
        assert headers["X-LeukoScreen-Event"] == "batch.complete"
    # Every attempt carries the same body: the receiver can deduplicate on its id.
    assert receiver.received[0][1] == receiver.received[1][1]
    envelope = json.loads(receiver.received[1][1])
    assert envelope["id"] == delivery_id and envelope["data"] == {"batch_id": "b1"}
    row = _delivery(sessions, delivery_id)
    assert (row.state, row.attempts, row.last_status) == ("delivered", 2, 200)
    assert row.delivered_at is not None and row.last_error is None


def test_a_task_delivered_again_after_success_sends_nothing(world, receiver):
    settings, sessions = world
    _webhook(sessions, settings, receiver.url, ["batch.complete"])
    (delivery_id,) = _emit(sessions)
    deliver(sessions, settings.secret_key, delivery_id, 5, 8)

    again = deliver(sessions, settings.secret_key, delivery_id, 5, 8)

    assert again.state is None
    assert len(receiver.received) == 1
    assert _delivery(sessions, delivery_id).attempts == 1


def test_a_tampered_body_or_an_old_timestamp_fails_verification():
    body = b'{"id":"x"}'
    header = webhooks.signature("whsec_test", 1_000_000, body)

    assert webhooks.verify("whsec_test", header, body, now=1_000_010)
    assert not webhooks.verify("whsec_test", header, body + b" ", now=1_000_010)
    assert not webhooks.verify("whsec_other", header, body, now=1_000_010)
    assert not webhooks.verify("whsec_test", header, body, now=1_000_000 + 301)


def test_a_receiver_that_keeps_failing_ends_failed_after_the_attempts_allowed(world, receiver):
    settings, sessions = world
    _webhook(sessions, settings, receiver.url, ["batch.complete"])
    (delivery_id,) = _emit(sessions)
    receiver.answers = [503, 503, 503]

    outcomes = [deliver(sessions, settings.secret_key, delivery_id, 5, 2).state for _ in range(3)]

    assert outcomes == [DeliveryState.PENDING, DeliveryState.FAILED, None]
    row = _delivery(sessions, delivery_id)
    assert (row.state, row.attempts, row.last_status) == ("failed", 2, 503)
    assert "HTTP 503" in (row.last_error or "")


def test_retries_back_off_exponentially_with_jitter_up_to_a_cap():
    import random

    rng = random.Random(1)
    first = [backoff_s(1, rng) for _ in range(50)]
    fifth = [backoff_s(5, rng) for _ in range(50)]

    assert all(5 <= d <= 10 for d in first) and len(set(first)) > 1
    assert all(80 <= d <= 160 for d in fifth)
    assert all(BACKOFF_CAP_S / 2 <= backoff_s(30, rng) <= BACKOFF_CAP_S for _ in range(20))


def test_the_celery_task_retries_a_refused_delivery_until_it_is_accepted(
    world, receiver, monkeypatch
):
    from worker.tasks import deliver_webhook

    settings, sessions = world
    monkeypatch.setattr(worker_runtime, "_settings", settings)
    monkeypatch.setattr(worker_runtime, "_runtime", None)
    _webhook(sessions, settings, receiver.url, ["batch.complete"])
    (delivery_id,) = _emit(sessions)
    receiver.answers = [500]

    # Run eagerly, Celery performs the task's retry at once instead of after the backoff.
    result = deliver_webhook.apply(args=[delivery_id])

    assert result.state == "SUCCESS" and result.result == {"state": "delivered", "attempt": 2}
    assert len(receiver.received) == 2
    assert _delivery(sessions, delivery_id).state == "delivered"


def test_completing_a_batch_writes_one_delivery_per_subscribed_active_webhook(world):
    settings, sessions = world
    subscribed, _ = _webhook(sessions, settings, "https://lis.example/a", ["batch.complete"])
    _webhook(sessions, settings, "https://lis.example/b", ["specimen.signed"])
    inactive, _ = _webhook(sessions, settings, "https://lis.example/c", ["batch.complete"])
    with sessions.begin() as s:
        webhooks.deactivate_webhook(s, s.get(Webhook, inactive), None)
    batch_id, _ = seed_scored(settings.database_url, [0.9, 0.1])

    with sessions.begin() as s:
        complete_batches(s, {batch_id})
    with sessions.begin() as s:  # a re-run task completes nothing new
        complete_batches(s, {batch_id})

    with sessions() as s:
        rows = s.scalars(select(WebhookDelivery)).all()
    assert [(r.webhook_id, r.event, r.subject) for r in rows] == [
        (subscribed, "batch.complete", f"{batch_id}/2")
    ]
    assert rows[0].payload["routes"] == {"flagged": 1, "cleared": 1}
    assert rows[0].payload["specimens"] == []
    assert rows[0].payload["fhir_path"] == f"/api/v1/batches/{batch_id}/fhir"


def test_emitting_the_same_event_for_the_same_subject_twice_writes_one_delivery(world):
    settings, sessions = world
    _webhook(sessions, settings, "https://lis.example/a", ["batch.complete"])

    first, second = _emit(sessions), _emit(sessions)

    assert len(first) == 1 and second == []


def test_deliveries_are_enqueued_after_commit_and_never_for_a_rolled_back_event(world):
    settings, sessions = world
    sent: list[str] = []

    class Broker:
        def send_task(self, name: str, args: list[str], **_: object) -> None:
            assert name == WEBHOOK_TASK
            sent.extend(args)

    watch_outbox(sessions, Broker())  # type: ignore[arg-type]
    _webhook(sessions, settings, "https://lis.example/a", ["batch.complete"])
    with pytest.raises(RuntimeError), sessions.begin() as s:
        emit(s, WebhookEvent.BATCH_COMPLETE, "rolled-back", {}, laboratory_id=DEFAULT_LAB_ID)
        raise RuntimeError("the event's transaction fails")
    assert sent == []

    with sessions.begin() as s:
        (delivery_id,) = emit(
            s, WebhookEvent.BATCH_COMPLETE, "kept", {}, laboratory_id=DEFAULT_LAB_ID
        )
        assert sent == []  # not before the commit

    assert sent == [delivery_id]


def test_a_sender_lost_mid_delivery_is_replaced_by_the_reconciler_and_it_is_sent_once(
    world, receiver
):
    settings, sessions = world
    settings = replace(settings, stale_after_s=60)
    _webhook(sessions, settings, receiver.url, ["batch.complete"])
    (lost,) = _emit(sessions, subject="lost")
    (fresh,) = _emit(sessions, subject="fresh")
    # A worker claimed it and died before sending; a minute later nobody has touched it.
    assert claim_delivery(sessions, lost, 8) is not None
    with sessions.begin() as s:
        s.execute(
            update(WebhookDelivery)
            .where(WebhookDelivery.id == lost)
            .values(updated_at=datetime.now(UTC) - timedelta(minutes=5))
        )

    report = reconcile(make_celery(settings), sessions, settings)

    assert report.deliveries_enqueued == 1
    messages = [json.loads(p.read_text()) for p in settings.broker_dir.glob("*.msg")]
    assert [m["headers"]["task"] for m in messages] == [WEBHOOK_TASK]
    assert deliver(sessions, settings.secret_key, lost, 5, 8).state is DeliveryState.DELIVERED
    assert [h["X-LeukoScreen-Delivery"] for h, _ in receiver.received] == [lost]
    assert _delivery(sessions, lost).attempts == 2
    assert _delivery(sessions, fresh).state == "pending"


def test_a_signed_specimen_notifies_with_its_fhir_report(world):
    settings, sessions = world
    _webhook(sessions, settings, "https://lis.example/a", ["specimen.signed"])
    scored_specimen(settings.database_url, "S-200", [0.8, 0.2])
    sign_specimen(settings.database_url, "S-200", "leukemia_suspected")

    with sessions.begin() as s:
        (delivery_id,) = emit_specimen_signed(s, "S-200")

    payload = _delivery(sessions, delivery_id).payload
    assert payload["signoff"]["interpretation"] == "leukemia_suspected"
    report = DiagnosticReport.model_validate(payload["report"])
    assert report.status == "final" and len(report.result) == 2


def test_admins_create_list_deactivate_and_resend_with_an_audit_trail(world, receiver):
    settings, sessions = world
    app = create_app(settings)
    admin = token_client(app, settings.database_url, "boss", "admin")

    created = admin.post(
        "/api/v1/webhooks", json={"url": receiver.url, "events": ["batch.complete"]}
    )
    assert created.status_code == 201, created.json
    hook = created.json
    assert hook["secret"].startswith("whsec_")
    listed = admin.get("/api/v1/webhooks").json["webhooks"]
    assert listed == [{k: v for k, v in hook.items() if k != "secret"}]
    with sessions() as s:
        stored = s.get(Webhook, hook["id"])
        assert stored is not None and hook["secret"] not in stored.secret_encrypted
        assert (
            webhooks.decrypt_secret(stored.secret_encrypted, settings.secret_key)
            == (hook["secret"])
        )
    (delivery_id,) = _emit(sessions)
    deliver(sessions, settings.secret_key, delivery_id, 5, 8)

    log = admin.get(f"/api/v1/webhooks/{hook['id']}/deliveries").json["deliveries"]
    resent = admin.post(f"/api/v1/webhook-deliveries/{delivery_id}/resend")
    assert [(d["id"], d["state"]) for d in log] == [(delivery_id, "delivered")]
    assert resent.status_code == 202
    assert (resent.json["state"], resent.json["attempts"]) == ("pending", 0)
    assert deliver(sessions, settings.secret_key, delivery_id, 5, 8).state is (
        DeliveryState.DELIVERED
    )
    assert [h["X-LeukoScreen-Delivery"] for h, _ in receiver.received] == [delivery_id] * 2

    gone = admin.delete(f"/api/v1/webhooks/{hook['id']}")
    assert gone.status_code == 200 and gone.json["active"] is False
    refused = admin.post(f"/api/v1/webhook-deliveries/{delivery_id}/resend")
    assert refused.status_code == 409
    assert _emit(sessions, subject="after") == []
    with sessions() as s:
        actions = s.scalars(select(AuditEvent.action).order_by(AuditEvent.id)).all()
    assert [a for a in actions if a.startswith("webhook.")] == [
        "webhook.create",
        "webhook.resend",
        "webhook.deactivate",
    ]


@pytest.mark.parametrize(
    "body",
    [
        {"url": "ftp://lis.example/x", "events": ["batch.complete"]},
        {"url": "https://user:pw@lis.example/x", "events": ["batch.complete"]},
        {"url": "https://lis.example/x", "events": []},
        {"url": "https://lis.example/x", "events": ["batch.deleted"]},
        {"url": "https://lis.example/x", "events": "batch.complete"},
        {"url": "http://[::1/x", "events": ["batch.complete"]},
        {"url": "https://lis.example/\x00", "events": ["batch.complete"]},
        {"url": ["https://lis.example/x"], "events": ["batch.complete"]},
    ],
)
def test_a_webhook_with_a_bad_url_or_unknown_events_is_refused(world, body):
    settings, _ = world
    admin = token_client(create_app(settings), settings.database_url, "boss", "admin")

    resp = admin.post("/api/v1/webhooks", json=body)

    assert resp.status_code == 400 and resp.json["error"]


@pytest.mark.parametrize(
    "url",
    [
        "http://169.254.169.254/latest/meta-data/",  # the cloud metadata service
        "http://2852039166/latest/meta-data/",  # the same address as one number
        "http://0xa9.0xfe.0xa9.0xfe/",  # ... in hexadecimal
        "http://[::ffff:169.254.169.254]/",  # ... as an IPv4-mapped IPv6 address
        "http://[fe80::1]/",
        "http://[fd00:ec2::254]/",  # AWS's metadata service over IPv6
        "http://0.0.0.0:6379/",  # "this host" on Linux
        "http://224.0.0.1/",
    ],
)
def test_a_webhook_to_a_metadata_or_unspecified_address_is_refused(world, url):
    settings, _ = world
    admin = token_client(create_app(settings), settings.database_url, "boss", "admin")

    resp = admin.post("/api/v1/webhooks", json={"url": url, "events": ["batch.complete"]})

    assert resp.status_code == 400 and "address" in resp.json["error"]


def test_a_delivery_to_a_name_that_resolves_to_the_metadata_service_is_not_sent(world, monkeypatch):
    settings, sessions = world
    _webhook(sessions, settings, "http://metadata.lis.example/hook", ["batch.complete"])
    (delivery_id,) = _emit(sessions)
    monkeypatch.setattr(
        "socket.getaddrinfo",
        lambda *a, **k: [(2, 1, 6, "", ("169.254.169.254", 80))],
    )
    posted: list[str] = []
    monkeypatch.setattr("requests.post", lambda url, **kw: posted.append(url))

    sent = deliver(sessions, settings.secret_key, delivery_id, 5, 1)

    assert posted == []
    assert sent.state == DeliveryState.FAILED
    assert "169.254.169.254" in (_delivery(sessions, delivery_id).last_error or "")


def test_the_readme_signature_check_accepts_a_real_delivery_and_refuses_a_changed_one():
    from tests.conftest import REPO

    readme = (REPO / "README.md").read_text()
    block = readme.split("Checking a delivery in Python", 1)[1]
    code = block.split("```python\n", 1)[1].split("```", 1)[0]
    namespace: dict[str, object] = {}
    exec(code, namespace)  # the example a laboratory copies
    verified = namespace["verified"]
    body = webhooks.body("d-1", "batch.complete", datetime.now(UTC), {"batch_id": "b1"})
    sent = webhooks.headers("whsec_lab", "d-1", "batch.complete", body)

    assert verified("whsec_lab", sent["X-LeukoScreen-Signature"], body)
    assert not verified("whsec_lab", sent["X-LeukoScreen-Signature"], body + b"x")
