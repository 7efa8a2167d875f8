"""Sending one webhook delivery: claim it, POST it signed, record what the receiver said.

The task (``worker.tasks.deliver_webhook``) retries a delivery that was not accepted after
``backoff_s``; the row in SQL says whether anything is left to send, so a re-delivered task
after a success, or a second task for the same delivery, sends nothing.
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass
from urllib.parse import urlsplit

import requests
from sqlalchemy.orm import Session, sessionmaker

from db import webhooks
from db.lifecycle import claim_delivery, finish_delivery
from db.models import DeliveryState

log = logging.getLogger(__name__)

# First retry after about 10 s, doubling up to 10 minutes: under the reconciler's stale
# period (15 minutes by default), so a waiting retry is not mistaken for a lost message.
BACKOFF_BASE_S = 10.0
BACKOFF_CAP_S = 600.0
# Enough of a refusal for the delivery log; receivers sometimes answer with a whole page.
BODY_EXCERPT = 300


@dataclass(frozen=True)
class Sent:
    """What one call did: ``state`` None when there was nothing to send."""

    state: DeliveryState | None
    attempt: int = 0
    status: int | None = None


def backoff_s(attempt: int, rng: random.Random | None = None) -> float:
    """Seconds before the retry after ``attempt`` failed sends: exponential, capped, with
    jitter ("equal jitter": half fixed, half random) so that retries to a receiver that was
    down do not all arrive in the same second when it comes back."""
    ceiling = min(BACKOFF_CAP_S, BACKOFF_BASE_S * 2 ** max(attempt - 1, 0))
    return ceiling / 2 + (rng or random).uniform(0, ceiling / 2)


def deliver(
    sessions: sessionmaker[Session],
    server_key: str,
    delivery_id: str,
    timeout_s: float,
    max_attempts: int,
) -> Sent:
    claim = claim_delivery(sessions, delivery_id, max_attempts)
    if claim is None:
        return Sent(None)
    status: int | None = None
    try:
        secret = webhooks.decrypt_secret(claim.secret_encrypted, server_key)
        payload = webhooks.body(claim.delivery_id, claim.event, claim.created_at, claim.payload)
        # Resolved again at every send: a name may point at the metadata service since.
        host = urlsplit(claim.url).hostname or ""
        if (address := webhooks.refused_address(host)) is not None:
            raise webhooks.RefusedAddress(
                f"{host} resolves to {address}, a metadata, unspecified or multicast address: "
                "not sent"
            )
        response = requests.post(
            claim.url,
            data=payload,
            headers=webhooks.headers(secret, claim.delivery_id, claim.event, payload),
            timeout=timeout_s,
            # A redirect would re-send a signed body somewhere nobody configured.
            allow_redirects=False,
        )
        status = response.status_code
        delivered = 200 <= status < 300
        error = None if delivered else f"HTTP {status}: {response.text[:BODY_EXCERPT]}"
    except (requests.RequestException, webhooks.SecretUnreadable, webhooks.RefusedAddress) as exc:
        delivered, error = False, f"{type(exc).__name__}: {exc}"
    state = finish_delivery(
        sessions,
        claim,
        delivered=delivered,
        status=status,
        error=error,
        max_attempts=max_attempts,
    )
    if not delivered:
        log.warning(
            "webhook delivery %s attempt %d/%d: %s", delivery_id, claim.attempt, max_attempts, error
        )
    return Sent(state, claim.attempt, status)
