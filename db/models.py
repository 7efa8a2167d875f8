"""The schema: the database is the source of truth for every image's state."""

from __future__ import annotations

import enum
import uuid
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    false,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship
from sqlalchemy.types import TypeDecorator

# SQLite only auto-increments a column declared exactly INTEGER PRIMARY KEY.
BigId = BigInteger().with_variant(Integer(), "sqlite")


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC on every backend; SQLite would otherwise hand back naive values."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is not None and value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        return value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is not None and value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        return value


class ImageState(enum.StrEnum):
    QUEUED = "queued"
    SCORING = "scoring"
    SCORED = "scored"
    FAILED = "failed"
    REJECTED = "rejected"
    # A file whose bytes another file of the same batch already brought: recorded (every file
    # sent has its row) but never stored twice nor scored; ``duplicate_of_id`` names the twin.
    DUPLICATE = "duplicate"


class BatchState(enum.StrEnum):
    SCORING = "scoring"
    COMPLETE = "complete"


class Base(DeclarativeBase):
    type_annotation_map = {datetime: UTCDateTime(), dict[str, Any]: JSON}


class Laboratory(Base):
    """A tenant: its users, tokens, batches (with their images, results and reviews) and audit
    rows are invisible to every other laboratory (``db.tenancy``)."""

    __tablename__ = "laboratory"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(255), unique=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Batch(Base):
    __tablename__ = "batch"
    __table_args__ = (
        # The batch list of one laboratory, newest first.
        Index("ix_batch_laboratory_created", "laboratory_id", "created_at"),
    )

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=lambda: str(uuid.uuid4()))
    laboratory_id: Mapped[int] = mapped_column(ForeignKey("laboratory.id"))
    name: Mapped[str] = mapped_column(String(255))
    # Always the name of the authenticated principal that created the batch, never client text.
    submitted_by: Mapped[str] = mapped_column(String(255))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    state: Mapped[str] = mapped_column(String(16), default=BatchState.SCORING.value)
    # Set when the batch completes: how its scores, domain distances and image quality
    # compare with the validation reference (``db.drift``); ``alarm`` true when they differ.
    drift: Mapped[dict[str, Any] | None] = mapped_column()

    images: Mapped[list[Image]] = relationship(back_populates="batch")


class Image(Base):
    __tablename__ = "image"
    __table_args__ = (
        # Batch progress is a GROUP BY state over one batch: this index answers it alone.
        Index("ix_image_batch_state", "batch_id", "state"),
        # Results pages walk a batch in id order (keyset pagination).
        Index("ix_image_batch_id", "batch_id", "id"),
        # The reconciler looks for stale queued/scoring images across all batches.
        Index("ix_image_state_updated", "state", "updated_at"),
        Index("ix_image_sha256", "sha256"),
        # A specimen's images, and the specimen list's GROUP BY.
        Index("ix_image_specimen", "specimen_id", "id"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    batch_id: Mapped[str] = mapped_column(ForeignKey("batch.id", ondelete="CASCADE"))
    sha256: Mapped[str] = mapped_column(String(64))
    original_name: Mapped[str] = mapped_column(String(1024))
    storage_key: Mapped[str | None] = mapped_column(String(128))
    size_bytes: Mapped[int] = mapped_column(BigInteger().with_variant(Integer(), "sqlite"))
    width: Mapped[int | None] = mapped_column(Integer)
    height: Mapped[int | None] = mapped_column(Integer)
    format: Mapped[str | None] = mapped_column(String(16))
    state: Mapped[str] = mapped_column(String(16), default=ImageState.QUEUED.value)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    error: Mapped[str | None] = mapped_column(Text)
    # Why a file was rejected, as a stable code beside ``error``'s words (``api.intake``).
    reason_code: Mapped[str | None] = mapped_column(String(32))
    # The image of the same batch with these bytes that is scored in this one's stead. No
    # foreign key: both rows are in one batch and go together, and adding one would make
    # SQLite rebuild a table that results and reviews point at.
    duplicate_of_id: Mapped[int | None] = mapped_column(BigId)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)
    enqueued_at: Mapped[datetime | None] = mapped_column()
    # The laboratory's specimen (accession number) the image is a field of, checked by
    # ``api.specimen_ids``; None when the upload named none.
    specimen_id: Mapped[str | None] = mapped_column(String(64))
    specimen_source: Mapped[str | None] = mapped_column(String(255))
    # Set when retention removed the stored pixels; the row, results and decisions stay.
    purged_at: Mapped[datetime | None] = mapped_column()

    batch: Mapped[Batch] = relationship(back_populates="images")
    results: Mapped[list[Result]] = relationship(back_populates="image")
    duplicate_of: Mapped[Image | None] = relationship(
        remote_side="Image.id", primaryjoin="foreign(Image.duplicate_of_id) == Image.id"
    )


class ModelVersion(Base):
    __tablename__ = "model_version"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    sha256: Mapped[str] = mapped_column(String(64), unique=True)
    name: Mapped[str] = mapped_column(String(255))
    threshold: Mapped[float] = mapped_column(Float)
    metrics: Mapped[dict[str, Any]] = mapped_column(default=dict)
    # The fitted gate's limits, thresholds and drift reference (``model.gate.Gate.describe``),
    # so that any process can check a batch for drift without loading the model.
    gate: Mapped[dict[str, Any] | None] = mapped_column()
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Result(Base):
    __tablename__ = "result"
    __table_args__ = (
        # Idempotency: a re-delivered task can never add a second result for the same model.
        UniqueConstraint("image_id", "model_version_id", name="uq_result_image_model"),
        # The review queue walks flagged results by (p_leukemia, id) descending, keyset-paged;
        # it replaces the (flagged, p_leukemia) index of 0001, of which it is a superset.
        Index("ix_result_queue", "flagged", "p_leukemia", "id"),
        # The same walk within one batch (and "what would threshold t flag" in a batch).
        Index("ix_result_batch_queue", "batch_id", "p_leukemia", "id"),
        # Batch counts by route (flagged / cleared / manual review).
        Index("ix_result_batch_route", "batch_id", "route"),
        # The last hour's routes for /metrics (flagged and manual-review rates).
        Index("ix_result_scored_at", "scored_at"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    image_id: Mapped[int] = mapped_column(ForeignKey("image.id", ondelete="CASCADE"))
    # A copy of the image's batch: a composite index on result can then serve a one-batch queue.
    batch_id: Mapped[str] = mapped_column(ForeignKey("batch.id", ondelete="CASCADE"))
    model_version_id: Mapped[int] = mapped_column(ForeignKey("model_version.id"))
    p_leukemia: Mapped[float] = mapped_column(Float)
    # True when the image goes to a person: route flagged or manual_review (the review queue
    # walks these); a cleared image is the only one the model answers for alone.
    flagged: Mapped[bool] = mapped_column(Boolean)
    threshold: Mapped[float] = mapped_column(Float)
    # model.gate.Route; the database's default sends a row written without one to a person.
    route: Mapped[str] = mapped_column(String(16), server_default="manual_review")
    route_reason: Mapped[str | None] = mapped_column(String(32))  # model.gate.RouteReason
    # The scores behind the route: domain distance and the quality measures.
    domain_distance: Mapped[float | None] = mapped_column(Float)
    quality: Mapped[dict[str, Any] | None] = mapped_column()
    scored_at: Mapped[datetime] = mapped_column(default=utcnow)
    worker: Mapped[str | None] = mapped_column(String(255))
    # model.card.SUBTYPES: the most likely B-ALL subtype and each one's probability given
    # leukemia, from a network with the subtype head; null for the others.
    subtype: Mapped[str | None] = mapped_column(String(16))
    subtype_probs: Mapped[dict[str, Any] | None] = mapped_column()
    # Storage key of the explanation overlay (``model.explain``), made after scoring for
    # images that go to a person; null until then, and for cleared images.
    heatmap_key: Mapped[str | None] = mapped_column(String(64))
    # When the reconciler last asked for the heatmap again (``worker.reconcile``): it waits
    # for that message before sending another, as ``image.enqueued_at`` does for scoring.
    heatmap_requested_at: Mapped[datetime | None] = mapped_column()

    image: Mapped[Image] = relationship(back_populates="results")
    model_version: Mapped[ModelVersion] = relationship()


class Role(enum.StrEnum):
    UPLOADER = "uploader"
    REVIEWER = "reviewer"
    ADMIN = "admin"


class Decision(enum.StrEnum):
    CONFIRMED = "confirmed"
    OVERTURNED = "overturned"
    SECOND_OPINION = "second_opinion"


class User(Base):
    __tablename__ = "user_account"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(255), unique=True)
    password_hash: Mapped[str] = mapped_column(String(255))
    role: Mapped[str] = mapped_column(String(16))
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    # The home laboratory: the user's batches go there, and a lab admin manages its users.
    laboratory_id: Mapped[int] = mapped_column(ForeignKey("laboratory.id"))
    # An admin whose scope is every laboratory, and who alone creates laboratories.
    global_admin: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    # Copied into the session cookie at sign-in and compared on every request: signing out
    # or changing the password increments it, which ends every existing session of the user.
    session_version: Mapped[int] = mapped_column(Integer, default=0, server_default="0")


class LaboratoryGrant(Base):
    """A further laboratory a user works for (a reviewer who reviews for several labs)."""

    __tablename__ = "laboratory_grant"

    user_id: Mapped[int] = mapped_column(
        ForeignKey("user_account.id", ondelete="CASCADE"), primary_key=True
    )
    laboratory_id: Mapped[int] = mapped_column(
        ForeignKey("laboratory.id", ondelete="CASCADE"), primary_key=True
    )


class ApiToken(Base):
    __tablename__ = "api_token"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("user_account.id"))
    # Only the SHA-256 of the token is kept: a leaked database does not leak usable tokens.
    token_sha256: Mapped[str] = mapped_column(String(64), unique=True)
    prefix: Mapped[str] = mapped_column(String(12))
    label: Mapped[str] = mapped_column(String(255), default="")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    created_by_id: Mapped[int | None] = mapped_column(ForeignKey("user_account.id"))
    revoked_at: Mapped[datetime | None] = mapped_column()

    user: Mapped[User] = relationship(foreign_keys=[user_id])


class Review(Base):
    """One pathologist decision about an image's content. Rows are only ever inserted; the
    latest seq of the content is its current decision, whichever copy was decided on."""

    __tablename__ = "review"
    __table_args__ = (
        # Implied by the content's sequence below; kept from 0002 (dropping it would make
        # SQLite rebuild an append-only table).
        UniqueConstraint("image_id", "seq", name="uq_review_image_seq"),
        # seq = previous seq + 1 per content: two reviewers deciding at once, on one copy or
        # on two byte-identical copies, cannot both extend the same history (the second
        # insert fails), and (sha256, seq) finds the latest row directly.
        # Per laboratory (0008): another laboratory that sent the same bytes has its own
        # history, and neither sees the other's.
        Index("uq_review_lab_sha256_seq", "laboratory_id", "sha256", "seq", unique=True),
        Index("ix_review_reviewer_created", "reviewer_id", "created_at"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    # The copy the reviewer was looking at.
    image_id: Mapped[int] = mapped_column(ForeignKey("image.id", ondelete="CASCADE"))
    # The image's laboratory, whose history of the content this row extends. Nullable only
    # so that SQLite adds it without rebuilding an append-only table; always set.
    laboratory_id: Mapped[int | None] = mapped_column(ForeignKey("laboratory.id"))
    # The content decided on: ``image.sha256``, the bytes the laboratory sent, so the
    # decision holds for every batch that holds those bytes (issue 11: one content, one review).
    # The empty default only lets SQLite add the column without rebuilding the table.
    sha256: Mapped[str] = mapped_column(String(64), server_default="")
    result_id: Mapped[int | None] = mapped_column(ForeignKey("result.id"))
    seq: Mapped[int] = mapped_column(Integer)
    decision: Mapped[str] = mapped_column(String(16))
    # What the decision means for this image: the model's flag confirmed or overturned.
    label: Mapped[str | None] = mapped_column(String(16))
    comment: Mapped[str] = mapped_column(Text, default="")
    previous_decision: Mapped[str | None] = mapped_column(String(16))
    reviewer_id: Mapped[int] = mapped_column(ForeignKey("user_account.id"))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    reviewer: Mapped[User] = relationship()


class AuditEvent(Base):
    __tablename__ = "audit_event"
    __table_args__ = (
        Index("ix_audit_event_created", "created_at"),
        Index("ix_audit_event_laboratory", "laboratory_id", "id"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    # The laboratory the event concerns; None for system-wide events, which only global
    # admins see (a sign-in attempt with an unknown name, a laboratory created).
    laboratory_id: Mapped[int | None] = mapped_column(ForeignKey("laboratory.id"))
    actor_id: Mapped[int | None] = mapped_column(ForeignKey("user_account.id"))
    actor_name: Mapped[str] = mapped_column(String(255))
    action: Mapped[str] = mapped_column(String(64))
    target: Mapped[str] = mapped_column(String(255), default="")
    details: Mapped[dict[str, Any]] = mapped_column(default=dict)


class LoginFailure(Base):
    """One failed sign-in, counted per user name and per client address to throttle guessing.

    In the database rather than process memory so every gunicorn worker sees the same counts.
    """

    __tablename__ = "login_failure"
    __table_args__ = (
        Index("ix_login_failure_name", "user_name", "created_at"),
        Index("ix_login_failure_client", "client_ip", "created_at"),
        Index("ix_login_failure_created", "created_at"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    user_name: Mapped[str] = mapped_column(String(255))
    client_ip: Mapped[str] = mapped_column(String(64))


class IdempotencyKey(Base):
    """The first answer to an upload sent with an ``Idempotency-Key``, replayed to its retries.

    Unique per user and key, so that two copies of one request racing each other record one
    batch: the second insert fails and that request answers with the first one's body.
    """

    __tablename__ = "idempotency_key"
    __table_args__ = (
        UniqueConstraint("user_id", "key", name="uq_idempotency_user_key"),
        Index("ix_idempotency_created", "created_at"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("user_account.id"))
    key: Mapped[str] = mapped_column(String(255))
    # Method and path the key was first sent with: reusing it elsewhere is a client bug.
    request: Mapped[str] = mapped_column(String(255))
    status: Mapped[int] = mapped_column(Integer)
    body: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Interpretation(enum.StrEnum):
    """A pathologist's conclusion for a whole specimen."""

    LEUKEMIA_SUSPECTED = "leukemia_suspected"
    NO_LEUKEMIA_DETECTED = "no_leukemia_detected"
    INADEQUATE_SAMPLE = "inadequate_sample"


class SpecimenSignoff(Base):
    """A signed interpretation of a specimen. Append-only: an amendment is a new row.

    ``seq`` = previous seq + 1 (unique), so two people signing at once cannot both extend the
    same history; an amendment names the row it replaces in ``amends_id``.
    """

    __tablename__ = "specimen_signoff"
    __table_args__ = (
        # A specimen is an id within one laboratory (0008): two laboratories may use the same.
        UniqueConstraint("laboratory_id", "specimen_id", "seq", name="uq_signoff_lab_specimen_seq"),
        Index("ix_signoff_created", "created_at"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    # Nullable only so that the column is added without rewriting old rows first; always set.
    laboratory_id: Mapped[int | None] = mapped_column(ForeignKey("laboratory.id"))
    specimen_id: Mapped[str] = mapped_column(String(64))
    seq: Mapped[int] = mapped_column(Integer)
    interpretation: Mapped[str] = mapped_column(String(32))
    comment: Mapped[str] = mapped_column(Text, default="")
    amends_id: Mapped[int | None] = mapped_column(ForeignKey("specimen_signoff.id"))
    # What was signed: image ids, their results and decisions at that moment, so that an
    # image added to the specimen afterwards shows the sign-off no longer covers everything.
    signed_content: Mapped[dict[str, Any]] = mapped_column(default=dict)
    signed_by_id: Mapped[int] = mapped_column(ForeignKey("user_account.id"))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    signed_by: Mapped[User] = relationship()


class WebhookEvent(enum.StrEnum):
    BATCH_COMPLETE = "batch.complete"
    SPECIMEN_SIGNED = "specimen.signed"


class Webhook(Base):
    """An admin-configured receiver of events, each delivery signed with its secret."""

    __tablename__ = "webhook"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    # Only this laboratory's events are sent to it; only its admins see and manage it.
    laboratory_id: Mapped[int] = mapped_column(ForeignKey("laboratory.id"))
    url: Mapped[str] = mapped_column(String(2048))
    events: Mapped[list[str]] = mapped_column(JSON, default=list)
    # Encrypted with a key derived from the server's secret key (``db.webhooks``): the sender
    # needs the secret itself to sign, so it cannot be hashed; it is never shown again.
    secret_encrypted: Mapped[str] = mapped_column(Text)
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    created_by_id: Mapped[int | None] = mapped_column(ForeignKey("user_account.id"))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class DeliveryState(enum.StrEnum):
    PENDING = "pending"
    DELIVERED = "delivered"
    FAILED = "failed"


class WebhookDelivery(Base):
    """One event for one webhook (an outbox row, written with the event's own transaction).

    Its id is the delivery id the receiver deduplicates on: retries and re-sends reuse it.
    """

    __tablename__ = "webhook_delivery"
    __table_args__ = (
        UniqueConstraint("webhook_id", "event", "subject", name="uq_delivery_event"),
        Index("ix_delivery_state_updated", "state", "updated_at"),
    )

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=lambda: str(uuid.uuid4()))
    webhook_id: Mapped[int] = mapped_column(ForeignKey("webhook.id", ondelete="CASCADE"))
    event: Mapped[str] = mapped_column(String(32))
    subject: Mapped[str] = mapped_column(String(255))
    payload: Mapped[dict[str, Any]] = mapped_column(default=dict)
    state: Mapped[str] = mapped_column(String(16), default=DeliveryState.PENDING.value)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    last_status: Mapped[int | None] = mapped_column(Integer)
    last_error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)
    delivered_at: Mapped[datetime | None] = mapped_column()


class WorkerHeartbeat(Base):
    """One Celery pool process that can take work, as it last reported itself.

    Written by the process every few seconds (``worker/heartbeat.py``) so that the API, which
    cannot see Celery's processes, can tell a stalled service (nobody consuming a queue) from a
    slow one. The newest ``last_beat_at`` per queue is what readiness and the batch page read.
    """

    __tablename__ = "worker_heartbeat"
    __table_args__ = (
        UniqueConstraint("host", "pid", name="uq_worker_heartbeat_process"),
        Index("ix_worker_heartbeat_last_beat", "last_beat_at"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    # Celery's node name (``cpu-1234@host``): the pool processes of one worker share it.
    node: Mapped[str] = mapped_column(String(255))
    host: Mapped[str] = mapped_column(String(255))
    pid: Mapped[int] = mapped_column(Integer)
    queues: Mapped[list[str]] = mapped_column(JSON, default=list)
    concurrency: Mapped[int] = mapped_column(Integer, default=1)
    # Known once the process has loaded its model (on its first chunk); null until then and
    # for the reconciler's processes, which load none.
    model_name: Mapped[str | None] = mapped_column(String(255))
    model_version: Mapped[str | None] = mapped_column(String(64))
    started_at: Mapped[datetime] = mapped_column(default=utcnow)
    last_beat_at: Mapped[datetime] = mapped_column(default=utcnow)
    # When the process last finished a task: live processes that stopped taking work show it.
    last_task_at: Mapped[datetime | None] = mapped_column()
    # Since when the task in progress runs; null when idle. A busy process is not stalled.
    task_started_at: Mapped[datetime | None] = mapped_column()
    images_last_minute: Mapped[int] = mapped_column(Integer, default=0)
