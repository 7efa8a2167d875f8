"""Outbound webhooks: receivers an admin configures, their secrets, and how a delivery is signed.

A webhook's secret signs every delivery (HMAC-SHA256), so the sender needs the secret itself:
it is stored encrypted (Fernet) under a key derived from the server's secret key, shown once
when the webhook is created, and never again. Rotating ``LEUKOSCREEN_SECRET_KEY`` makes the
stored secrets unreadable: deliveries then fail with that reason and the webhooks must be
created anew.

Each delivery is a POST of a JSON body with three headers:

``X-LeukoScreen-Event``
    ``batch.complete`` or ``specimen.signed``;
``X-LeukoScreen-Delivery``
    the delivery id, the same for every retry and re-send: the receiver deduplicates on it;
``X-LeukoScreen-Signature``
    ``t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<body>" under the secret>``; a receiver
    checks it (``verify``) and refuses old timestamps, so a captured request cannot be replayed.

Delivery states (pending → delivered | failed, re-send) change in ``db.lifecycle``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import json
import secrets
import socket
import time
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

from cryptography.fernet import Fernet, InvalidToken
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from sqlalchemy import select
from sqlalchemy.orm import Session

from db import tenancy
from db.audit import Actor, record_event
from db.errors import Invalid
from db.models import Webhook, WebhookDelivery, WebhookEvent

EVENT_HEADER = "X-LeukoScreen-Event"
DELIVERY_HEADER = "X-LeukoScreen-Delivery"
SIGNATURE_HEADER = "X-LeukoScreen-Signature"
# How old a signature's timestamp a receiver should accept (``verify``'s default).
TOLERANCE_S = 300
SECRET_PREFIX = "whsec_"
MAX_URL = 2048


# Never a receiver: the cloud metadata service (link-local 169.254.169.254, and AWS's
# fd00:ec2::254), "this host" (0.0.0.0 reaches the worker's own services on Linux) and
# multicast. Private networks stay allowed: a laboratory's LIS usually lives on one.
METADATA_ADDRESSES = frozenset({ipaddress.ip_address("fd00:ec2::254")})


class SecretUnreadable(RuntimeError):
    """A stored secret no longer decrypts: the server's secret key changed since."""


class RefusedAddress(RuntimeError):
    """The receiver's host is, or resolves to, an address no webhook may be sent to."""


def _refused(address: str) -> bool:
    ip = ipaddress.ip_address(address.split("%", 1)[0])  # fe80::1%eth0: without the scope
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_link_local or ip.is_unspecified or ip.is_multicast or ip in METADATA_ADDRESSES


def refused_address(host: str, numeric_only: bool = False) -> str | None:
    """The address of ``host`` that no webhook may reach, or None.

    ``numeric_only`` reads only the forms of an address itself (2852039166 and 0xa9.0xfe.0xa9.0xfe
    are 169.254.169.254 to the resolver), without asking DNS: a name is checked when sent, as
    it resolves then.
    """
    flags = socket.AI_NUMERICHOST if numeric_only else 0
    try:
        found = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM, flags=flags)
    except (OSError, UnicodeError, ValueError):
        return None  # a name, or one that does not resolve: the send itself fails then
    return next((str(a[4][0]) for a in found if _refused(str(a[4][0]))), None)


def _fernet(server_key: str) -> Fernet:
    # Derived, not the session-signing key itself: one key per purpose.
    key = HKDF(
        algorithm=hashes.SHA256(), length=32, salt=None, info=b"leukoscreen webhook secrets"
    ).derive(server_key.encode())
    return Fernet(base64.urlsafe_b64encode(key))


def encrypt_secret(secret: str, server_key: str) -> str:
    return _fernet(server_key).encrypt(secret.encode()).decode()


def decrypt_secret(token: str, server_key: str) -> str:
    try:
        return _fernet(server_key).decrypt(token.encode()).decode()
    except InvalidToken:
        raise SecretUnreadable(
            "the webhook secret cannot be decrypted: LEUKOSCREEN_SECRET_KEY changed since the "
            "webhook was created; create it again"
        ) from None


def check_url(url: str) -> str:
    url = url.strip()
    bad = Invalid(f"url must be an http(s) URL of at most {MAX_URL} characters")
    if len(url) > MAX_URL or not url.isprintable() or " " in url:
        raise bad
    try:
        parts = urlsplit(url)
        host = parts.hostname
    except ValueError:  # a malformed IPv6 literal, say
        raise bad from None
    if parts.scheme not in ("https", "http") or not host:
        raise bad
    if parts.username or parts.password:
        raise Invalid("url must not carry a user name or password: deliveries are signed")
    if (address := refused_address(host, numeric_only=True)) is not None:
        raise Invalid(
            f"url must not name the address {address}: a metadata, unspecified or multicast "
            "address is never a receiver"
        )
    return url


def check_events(events: Any) -> list[str]:
    known = [e.value for e in WebhookEvent]
    if not isinstance(events, list) or not events or any(e not in known for e in events):
        raise Invalid(f"events must be a non-empty list of {', '.join(known)}")
    return [e for e in known if e in events]


@dataclass(frozen=True)
class CreatedWebhook:
    webhook: Webhook
    secret: str  # shown to the admin once, never stored in clear


def create_webhook(
    session: Session,
    url: str,
    events: Any,
    server_key: str,
    actor: Actor | None,
    laboratory_id: int | None = None,
) -> CreatedWebhook:
    """A receiver of ``laboratory_id``'s events (default: the default laboratory, for an
    operator)."""
    url, chosen = check_url(url), check_events(events)
    if laboratory_id is None:
        laboratory_id = tenancy.default_laboratory(session).id
    secret = SECRET_PREFIX + secrets.token_urlsafe(32)
    webhook = Webhook(
        laboratory_id=laboratory_id,
        url=url,
        events=chosen,
        secret_encrypted=encrypt_secret(secret, server_key),
        active=True,
        created_by_id=actor.id if actor else None,
    )
    session.add(webhook)
    session.flush()
    record_event(
        session,
        actor,
        "webhook.create",
        f"webhook:{webhook.id}",
        laboratory_id=laboratory_id,
        url=url,
        events=chosen,
    )
    return CreatedWebhook(webhook, secret)


def list_webhooks(session: Session, scope: tenancy.Scope) -> list[Webhook]:
    stmt = tenancy.scoped(select(Webhook), scope, Webhook.laboratory_id).order_by(Webhook.id)
    return list(session.scalars(stmt))


def deactivate_webhook(session: Session, webhook: Webhook, actor: Actor | None) -> Webhook:
    """Stop sending to it (kept, with its delivery log); pending deliveries end ``failed``."""
    if webhook.active:
        webhook.active = False
        record_event(
            session,
            actor,
            "webhook.deactivate",
            f"webhook:{webhook.id}",
            laboratory_id=webhook.laboratory_id,
            url=webhook.url,
        )
    return webhook


def deliveries(
    session: Session, webhook_id: int, limit: int = 100, state: str | None = None
) -> list[WebhookDelivery]:
    """The delivery log of one webhook, newest first."""
    stmt = select(WebhookDelivery).where(WebhookDelivery.webhook_id == webhook_id)
    if state:
        stmt = stmt.where(WebhookDelivery.state == state)
    return list(
        session.scalars(
            stmt.order_by(WebhookDelivery.created_at.desc(), WebhookDelivery.id).limit(limit)
        )
    )


def body(delivery_id: str, event: str, created_at: datetime, data: dict[str, Any]) -> bytes:
    """The bytes POSTed: the same for every attempt of one delivery."""
    envelope = {
        "id": delivery_id,
        "event": event,
        "created_at": created_at.isoformat(),
        "data": data,
    }
    return json.dumps(envelope, sort_keys=True, separators=(",", ":")).encode()


def signature(secret: str, timestamp: int, payload: bytes) -> str:
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + payload, hashlib.sha256)
    return f"t={timestamp},v1={mac.hexdigest()}"


def headers(
    secret: str, delivery_id: str, event: str, payload: bytes, now: float | None = None
) -> dict[str, str]:
    return {
        "Content-Type": "application/json",
        "User-Agent": "LeukoScreen-Webhook/1",
        EVENT_HEADER: event,
        DELIVERY_HEADER: delivery_id,
        SIGNATURE_HEADER: signature(secret, int(now if now is not None else time.time()), payload),
    }


def verify(
    secret: str,
    header: str,
    payload: bytes,
    tolerance_s: int = TOLERANCE_S,
    now: float | None = None,
) -> bool:
    """What a receiver checks: the signature matches and its timestamp is recent."""
    fields = dict(part.split("=", 1) for part in header.split(",") if "=" in part)
    try:
        timestamp = int(fields["t"])
    except (KeyError, ValueError):
        return False
    if abs((now if now is not None else time.time()) - timestamp) > tolerance_s:
        return False
    expected = signature(secret, timestamp, payload).split("v1=", 1)[1]
    return hmac.compare_digest(expected, fields.get("v1", ""))
