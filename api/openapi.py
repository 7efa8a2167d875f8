"""The OpenAPI 3 description of the JSON API, served at /api/v1/openapi.json.

Kept beside the routes it describes; tests check that every route is described and that
schemathesis finds no server error and no response outside these schemas.
"""

from __future__ import annotations

import functools
from typing import Any

from flask import Blueprint, jsonify

from api.intake import Code
from api.params import MAX_ID, id_limit
from db.models import (
    BatchState,
    Decision,
    DeliveryState,
    ImageState,
    Interpretation,
    Role,
    WebhookEvent,
)
from db.reviews import QUEUE_ROUTES
from db.reviews import STATES as REVIEW_STATES
from db.specimens import SpecimenStatus
from db.subtypes import SUBTYPE_COLUMNS
from leukoscreen.imagetypes import MIME_TYPES
from model.card import SUBTYPES
from model.gate import Route, RouteReason

bp = Blueprint("openapi", __name__)

ERROR: dict[str, Any] = {
    "type": "object",
    "required": ["error", "status"],
    "properties": {"error": {"type": "string"}, "status": {"type": "integer"}},
}
FILE_ROW = {
    "type": "object",
    "required": ["file", "status"],
    "properties": {
        "file": {"type": "string"},
        "status": {"type": "string", "enum": ["accepted", "rejected", "duplicate"]},
        "image_id": {"type": "integer"},
        "sha256": {"type": "string"},
        "reason": {"type": "string", "description": "why it was rejected, in plain words"},
        "reason_code": {
            "type": "string",
            "enum": [c.value for c in Code],
            "description": "the same reason as a stable code",
        },
        "duplicate_of": {
            "type": "integer",
            "description": "a duplicate's twin: the image of the batch with the same bytes",
        },
        "specimen_id": {"type": "string"},
    },
}
INTAKE = {
    "type": "object",
    "required": ["batch_id", "accepted", "rejected", "duplicate", "enqueued", "files"],
    "properties": {
        "batch_id": {"type": "string"},
        "accepted": {"type": "integer"},
        "rejected": {"type": "integer"},
        "duplicate": {"type": "integer"},
        "enqueued": {"type": "integer"},
        "note": {"type": "string"},
        "files": {"type": "array", "items": FILE_ROW},
    },
}
# A retry with the same key (per user, kept 24 h) is answered with the first answer.
IDEMPOTENCY_KEY = {
    "name": "Idempotency-Key",
    "in": "header",
    "schema": {"type": "string", "minLength": 1, "maxLength": 255},
}
UNUSABLE = {
    "type": "object",
    "required": ["error", "status", "files"],
    "properties": {
        **ERROR["properties"],
        "files": {"type": "array", "items": FILE_ROW},
        "problems": {
            "type": "array",
            "items": {"type": "string"},
            "description": "every problem of the specimen identities (manifest, folders, id)",
        },
    },
}
# Every scored image's route and its machine-readable reason (model.gate); null until scored.
ROUTE = {
    "type": ["string", "null"],
    "enum": [*(r.value for r in Route), None],
    "description": "flagged or cleared (the model judged the image), or manual_review (it "
    "must not be trusted on this image: a person decides)",
}
ROUTE_REASON = {
    "type": ["string", "null"],
    "enum": [*(r.value for r in RouteReason), None],
    "description": "why an image goes to manual review; null for flagged and cleared",
}
# A network with the subtype head (model.card.P_CLASSES) gives each image's B-ALL subtype.
SUBTYPE = {
    "type": ["string", "null"],
    "enum": [*SUBTYPES, None],
    "description": "the most likely B-ALL subtype if the image is leukemic (a model estimate, "
    "not a diagnosis); null until scored and for a network without the subtype head",
}
SUBTYPE_PROBS = {
    "type": ["object", "null"],
    "properties": {s: {"type": "number", "minimum": 0, "maximum": 1} for s in SUBTYPES},
    "description": "each subtype's probability given leukemia (they sum to 1; p_leukemia is "
    "the probability of leukemia); null where subtype is. The CSV export has them as columns "
    + ", ".join(SUBTYPE_COLUMNS.values()),
}
# What the model says of an image, in every representation of its result (null until scored).
MODEL_SAYS = {
    "p_leukemia": {"type": ["number", "null"]},
    "route": ROUTE,
    "route_reason": ROUTE_REASON,
    "subtype": SUBTYPE,
    "subtype_probs": SUBTYPE_PROBS,
    "threshold": {"type": ["number", "null"]},
    "model_version": {"type": ["string", "null"]},
}
STATE_COUNTS = {
    "type": "object",
    "properties": {s.value: {"type": "integer"} for s in ImageState},
}
BATCH = {
    "type": "object",
    "required": ["id", "name", "state", "total", "done", "pending", "failed", "counts"],
    "properties": {
        "id": {"type": "string"},
        "name": {"type": "string"},
        "laboratory_id": {"type": "integer", "description": "the uploader's laboratory"},
        "submitted_by": {
            "type": "string",
            "description": "the signed-in user or token owner that created the batch",
        },
        "created_at": {"type": "string", "format": "date-time"},
        "state": {"type": "string", "enum": [s.value for s in BatchState]},
        "counts": STATE_COUNTS,
        "total": {"type": "integer"},
        "done": {"type": "integer"},
        "pending": {"type": "integer"},
        "failed": {"type": "integer"},
        "rejected": {"type": "integer"},
        "duplicate": {
            "type": "integer",
            "description": "files repeating another file of the batch (scored once)",
        },
        "flagged": {"type": "integer", "description": "scored images routed flagged"},
        "cleared": {"type": "integer", "description": "scored images routed cleared"},
        "manual_review": {
            "type": "integer",
            "description": "scored images the model cannot judge (route manual_review)",
        },
        "progress": {"type": "number"},
        "eta_seconds": {"type": ["number", "null"]},
        "drift": {
            "type": ["object", "null"],
            "description": "the finished batch compared with the validation images (db.drift); "
            "null until it is complete",
        },
        "drift_warning": {
            "type": ["string", "null"],
            "description": "what differs, in one sentence, when the drift alarm is raised",
        },
        "reviews": {
            "type": "object",
            "description": "images per current decision (confirmed, overturned, "
            "second_opinion), and false_negative: cleared images overturned to leukemia",
        },
        "results_url": {"type": "string"},
        "stalled": {
            "type": "boolean",
            "description": "images are pending but no live worker consumes the scoring queue, "
            "or none has finished any work for LEUKOSCREEN_STALL_AFTER_S",
        },
        "stall_message": {
            "type": ["string", "null"],
            "description": "why, in one sentence for a technician; null when not stalled",
        },
    },
}
QUEUE_PRESENCE = {
    "type": "object",
    "additionalProperties": {
        "type": "object",
        "required": ["processes", "hosts", "last_beat_age_s"],
        "properties": {
            "processes": {"type": "integer", "description": "live pool processes"},
            "hosts": {"type": "integer"},
            "last_beat_age_s": {"type": ["number", "null"]},
        },
    },
}
READINESS = {
    "type": "object",
    "required": ["status", "checks", "reasons"],
    "properties": {
        "status": {"type": "string", "enum": ["ready", "not_ready"]},
        "checks": {"type": "object"},
        "reasons": {"type": "array", "items": {"type": "string"}},
        "queues": QUEUE_PRESENCE,
        "oldest_queued_age_s": {"type": ["number", "null"]},
        "oldest_scoring_age_s": {"type": ["number", "null"]},
        "stalled": {"type": ["string", "null"]},
    },
}
WORKER = {
    "type": "object",
    "required": ["node", "host", "pid", "queues", "last_beat_at", "stale"],
    "properties": {
        "node": {"type": "string"},
        "host": {"type": "string"},
        "pid": {"type": "integer"},
        "queues": {"type": "array", "items": {"type": "string"}},
        "concurrency": {"type": "integer"},
        "model_name": {"type": ["string", "null"]},
        "model_version": {"type": ["string", "null"]},
        "started_at": {"type": "string", "format": "date-time"},
        "last_beat_at": {"type": "string", "format": "date-time"},
        "last_beat_age_s": {"type": "number"},
        "last_task_at": {"type": ["string", "null"]},
        "images_last_minute": {"type": "integer"},
        "task_started_at": {"type": ["string", "null"], "description": "the task in progress"},
        "stale": {"type": "boolean"},
    },
}
WORKERS = {
    "type": "object",
    "required": ["workers", "queues"],
    "properties": {
        "workers": {"type": "array", "items": WORKER},
        "queues": QUEUE_PRESENCE,
        "stale_after_s": {"type": "integer"},
    },
}
FALSE_NEGATIVE = {
    "type": ["boolean", "null"],
    "description": "cleared by the model, leukemia by its current review (found in QC)",
}
RESULT_ROW = {
    "type": "object",
    "required": ["image_id", "file_name", "sha256", "state"],
    "properties": {
        "image_id": {"type": "integer"},
        "file_name": {"type": "string"},
        "specimen_id": {"type": ["string", "null"]},
        "sha256": {"type": "string"},
        "state": {"type": "string", "enum": [s.value for s in ImageState]},
        **MODEL_SAYS,
        "flagged": {"type": ["boolean", "null"]},
        "domain_distance": {"type": ["number", "null"]},
        "model_sha256": {"type": ["string", "null"]},
        "scored_at": {"type": ["string", "null"]},
        "batch_name": {"type": "string"},
        "duplicate_of": {
            "type": ["integer", "null"],
            "description": "a duplicate's twin, whose result and decision the row shows",
        },
        "reason": {
            "type": ["string", "null"],
            "description": "why the file has no plain verdict (rejected, duplicate, failed, "
            "manual review), in words a technician reads",
        },
        "reason_code": {"type": ["string", "null"], "description": "the reason as a code"},
        "error": {"type": ["string", "null"]},
        "false_negative": FALSE_NEGATIVE,
    },
}


def _image_item(**properties: Any) -> dict[str, Any]:
    """An object about one image: its id, file name and state, and these ``properties``."""
    return {
        "type": "object",
        "required": ["image_id", "file_name", "state"],
        "properties": {
            "image_id": {"type": "integer"},
            "file_name": {"type": "string"},
            "state": {"type": "string", "enum": [s.value for s in ImageState]},
            **properties,
        },
    }


HEATMAP_URL = {
    "type": ["string", "null"],
    "description": "the image's explanation heatmap (GET /api/v1/images/{image_id}/heatmap): "
    "where the network looked, made after scoring for images that go to a person; null until "
    "then, for cleared images and once retention purged the pixels",
}
LIST_ITEM = _image_item(
    duplicate_of={"type": ["integer", "null"]},
    duplicate_of_file={"type": ["string", "null"], "description": "the twin's file name"},
    has_image={"type": "boolean"},
    p_leukemia={"type": ["number", "null"]},
    route=ROUTE,
    subtype=SUBTYPE,
    subtype_probs=SUBTYPE_PROBS,
    heatmap_url=HEATMAP_URL,
    reason={"type": ["string", "null"]},
    reason_code={"type": ["string", "null"]},
    review_decision={"type": ["string", "null"]},
    review_label={"type": ["string", "null"]},
)


QUEUE_ITEM = {
    "type": "object",
    "required": ["image_id", "p_leukemia", "flagged", "route", "state"],
    "properties": {
        "image_id": {"type": "integer"},
        "p_leukemia": {"type": "number"},
        "flagged": {"type": "boolean", "description": "goes to a person: flagged or manual_review"},
        "route": ROUTE,
        "route_reason": ROUTE_REASON,
        "route_reason_text": {
            "type": ["string", "null"],
            "description": "route_reason in plain words, as the pages show it",
        },
        "subtype": SUBTYPE,
        "subtype_probs": SUBTYPE_PROBS,
        "domain_distance": {"type": ["number", "null"]},
        "heatmap_url": HEATMAP_URL,
        "state": {"type": "string"},
        "false_negative": FALSE_NEGATIVE,
        "specimen_id": {"type": ["string", "null"]},
        "copies": {
            "type": "array",
            "description": "the other images, in any batch, with the same bytes: they share "
            "this image's decision",
            "items": {"type": "object"},
        },
    },
}
QUEUE_PAGE = {
    "type": "object",
    "required": ["items", "next"],
    "properties": {
        "items": {"type": "array", "items": QUEUE_ITEM},
        "next": {"type": ["string", "null"]},
    },
}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _errors(*codes: int) -> dict[str, Any]:
    text = {
        400: "bad request",
        401: "no valid token or session",
        403: "role not allowed",
        404: "not found",
        409: "conflicts with the current state (a newer decision, the last active admin)",
        410: "gone on purpose (the image's pixels were purged by retention)",
        413: "request too large",
        422: "nothing usable",
        503: "a dependency is down",
        507: "storage full",
    }
    # Every operation needs a token or session, so 401 and 403 can always happen.
    return {str(c): _json(ERROR, text[c]) for c in (*codes, 401, 403)}


OBJECT = {"type": "object"}


def _id(name: str) -> dict[str, Any]:
    top = id_limit(name)
    return {
        "name": name,
        "in": "path",
        "required": True,
        "schema": {"type": "integer", "minimum": 0, "maximum": top},
    }


def _query(name: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"name": name, "in": "query", "schema": schema}


def _json_body(schema: dict[str, Any]) -> dict[str, Any]:
    return {"required": True, "content": {"application/json": {"schema": schema}}}


ROLES = [r.value for r in Role]
UNIT = {"type": "number", "minimum": 0, "maximum": 1}


UPLOAD_BODY = {
    "required": True,
    "content": {
        "multipart/form-data": {
            "schema": {
                "type": "object",
                "required": ["images"],
                "properties": {
                    "images": {
                        "type": "array",
                        "minItems": 1,
                        "items": {"type": "string", "format": "binary"},
                        "description": "images (JPEG, PNG, BMP, TIFF) or .zip archives",
                    },
                    # Multipart text fields are text whatever they look like: no type to violate.
                    "name": {"description": "batch name (text)"},
                    "manifest": {
                        "type": "string",
                        "format": "binary",
                        "description": "CSV with columns file, specimen_id, optional source "
                        "(or a manifest.csv among the images or at the top of a zip)",
                    },
                    "specimen_id": {"description": "one specimen id for every file (text)"},
                    "specimen_folders": {
                        "description": "1: each file's folder name is its specimen id"
                    },
                },
            }
        }
    },
}
BATCH_ID = {"name": "batch_id", "in": "path", "required": True, "schema": {"type": "string"}}
SPECIMEN_ID = {
    "name": "specimen_id",
    "in": "path",
    "required": True,
    "schema": {"type": "string", "maxLength": 64},
}
# A specimen id names a specimen within one laboratory: whoever sees several that use the
# same id says whose (else 409); one they do not see is 404.
SPECIMEN_LAB = {
    "name": "laboratory",
    "in": "query",
    "schema": {"type": "integer", "minimum": 1},
    "description": "the laboratory whose specimen the id names",
}
SPECIMEN_COUNTS = {
    "type": "object",
    "properties": {
        k: {"type": "integer"}
        for k in ("images", *(r.value for r in Route), "not_scored", "awaiting_decision")
    },
}
SIGNOFF = {
    "type": "object",
    "required": ["id", "seq", "interpretation", "signed_by", "signed_at"],
    "properties": {
        "id": {"type": "integer"},
        "seq": {"type": "integer"},
        "interpretation": {"type": "string", "enum": [i.value for i in Interpretation]},
        "interpretation_text": {"type": "string"},
        "comment": {"type": "string"},
        "signed_by": {"type": "string"},
        "signed_at": {"type": "string", "format": "date-time"},
        "amends_id": {"type": ["integer", "null"]},
    },
}
SPECIMEN_STATUS = {
    "type": "string",
    "enum": [s.value for s in SpecimenStatus],
    "description": "db.specimens rules: scoring, needs_review, ready_to_sign, "
    "changed_since_signing, signed",
}
SPECIMEN_ROW = {
    "type": "object",
    "required": ["specimen_id", "status", "images"],
    "properties": {
        "specimen_id": {"type": "string"},
        "laboratory_id": {"type": "integer"},
        "status": SPECIMEN_STATUS,
        "status_text": {"type": "string"},
        "images": {"type": "integer"},
        "flagged": {"type": "integer"},
        "manual_review": {"type": "integer"},
        "awaiting_decision": {"type": "integer"},
        "max_p_leukemia": {"type": ["number", "null"]},
        "last_upload": {"type": "string", "format": "date-time"},
    },
}
SPECIMEN_IMAGE = _image_item(
    batch_id={"type": "string"},
    **MODEL_SAYS,
    review_decision={"type": ["string", "null"]},
    reviewed_by={"type": ["string", "null"]},
    image_purged={"type": "boolean"},
)
SPECIMEN = {
    "type": "object",
    "required": ["specimen_id", "status", "counts", "images", "signoffs"],
    "properties": {
        "specimen_id": {"type": "string"},
        "laboratory_id": {"type": "integer"},
        "source": {"type": "string"},
        "status": SPECIMEN_STATUS,
        "status_text": {"type": "string"},
        "counts": SPECIMEN_COUNTS,
        "max_p_leukemia": {"type": ["number", "null"]},
        "batches": {"type": "array", "items": {"type": "string"}},
        "signoff": {"oneOf": [SIGNOFF, {"type": "null"}]},
        "signoffs": {"type": "array", "items": SIGNOFF},
        "images": {"type": "array", "items": SPECIMEN_IMAGE},
    },
}


def specimen_paths() -> dict[str, Any]:
    """Specimens and their sign-offs (see api/specimens.py)."""
    return {
        "/api/v1/specimens": {
            "get": {
                "summary": "specimens, most recently extended first, keyset-paged",
                "parameters": [
                    _query("before", {"type": "integer", "minimum": 0}),
                    _query("limit", {"type": "integer", "minimum": 1, "maximum": 500}),
                ],
                "responses": {
                    "200": _json(
                        {
                            "type": "object",
                            "required": ["specimens"],
                            "properties": {
                                "specimens": {"type": "array", "items": SPECIMEN_ROW},
                                "next_before": {"type": "integer"},
                            },
                        },
                        "specimens",
                    ),
                    **_errors(400, 503),
                },
            }
        },
        "/api/v1/specimens/{specimen_id}": {
            "get": {
                "summary": "one specimen: images (most suspicious first), status, sign-offs",
                "parameters": [SPECIMEN_ID, SPECIMEN_LAB],
                "responses": {"200": _json(SPECIMEN, "specimen"), **_errors(400, 404, 409, 503)},
            }
        },
        "/api/v1/specimens/{specimen_id}/signoffs": {
            "post": {
                "summary": "sign the specimen, or amend its latest sign-off (amends_id)",
                "parameters": [SPECIMEN_ID, SPECIMEN_LAB],
                "requestBody": _json_body(
                    {
                        "type": "object",
                        "required": ["interpretation"],
                        "properties": {
                            "interpretation": {
                                "type": "string",
                                "enum": [i.value for i in Interpretation],
                            },
                            "comment": {"type": "string", "maxLength": 4000},
                            "amends_id": {"type": "integer", "minimum": 1},
                        },
                    }
                ),
                "responses": {
                    "201": _json(
                        {
                            "type": "object",
                            "required": ["signoff_id", "specimen"],
                            "properties": {
                                "signoff_id": {"type": "integer"},
                                "specimen": SPECIMEN,
                            },
                        },
                        "signed",
                    ),
                    **_errors(400, 404, 409, 503),
                },
            }
        },
    }


def review_and_account_paths() -> dict[str, Any]:
    """Pathologist review and administration (see api/reviews.py and api/accounts.py)."""
    return {
        "/api/v1/review/queue": {
            "get": {
                "summary": "images that need a person, most suspicious first, keyset-paged",
                "parameters": [
                    _query("state", {"type": "string", "enum": [*REVIEW_STATES, "all"]}),
                    {
                        **_query("route", {"type": "string", "enum": list(QUEUE_ROUTES)}),
                        "description": "all (default): flagged and manual_review; or one of them",
                    },
                    _query("batch", {"type": "string"}),
                    _query("specimen", {"type": "string"}),
                    {**SPECIMEN_LAB, "description": "one laboratory's images only"},
                    _query("since", {"type": "string", "format": "date"}),
                    _query("until", {"type": "string", "format": "date"}),
                    _query("min_p", UNIT),
                    _query("max_p", UNIT),
                    _query("threshold", UNIT),
                    _query("order", {"type": "string", "enum": ["asc", "desc"]}),
                    _query("after", {"type": "string"}),
                    _query("limit", {"type": "integer", "minimum": 1, "maximum": 500}),
                ],
                "responses": {"200": _json(QUEUE_PAGE, "queue page"), **_errors(400, 404, 503)},
            }
        },
        "/api/v1/review/items/{image_id}": {
            "get": {
                "summary": "one image as the review panel shows it",
                "parameters": [_id("image_id")],
                "responses": {"200": _json(QUEUE_ITEM, "item"), **_errors(404, 503)},
            }
        },
        "/api/v1/images/{image_id}/reviews": {
            "get": {
                "summary": "decision history (append-only)",
                "parameters": [_id("image_id")],
                "responses": {"200": _json(OBJECT, "history"), **_errors(404, 503)},
            },
            "post": {
                "summary": "record a decision",
                "parameters": [_id("image_id")],
                "requestBody": _json_body(
                    {
                        "type": "object",
                        "required": ["decision"],
                        "properties": {
                            "decision": {
                                "type": "string",
                                "enum": [d.value for d in Decision],
                            },
                            "comment": {"type": "string"},
                            "expected_seq": {"type": "integer"},
                        },
                    }
                ),
                "responses": {
                    "201": _json(OBJECT, "decision recorded, with undo_until"),
                    **_errors(400, 404, 409, 503),
                },
            },
        },
        "/api/v1/images/{image_id}/reviews/{seq}/undo": {
            "post": {
                "summary": "take back your own latest decision (seq) shortly after making it: "
                "appends a withdrawn row, the image is undecided again",
                "parameters": [_id("image_id"), _id("seq")],
                "responses": {
                    "201": _json(OBJECT, "withdrawn row recorded"),
                    **_errors(404, 409, 503),
                },
            }
        },
        "/api/v1/batches/{batch_id}/threshold": {
            "get": {
                "summary": "what would be flagged at another threshold (nothing stored)",
                "parameters": [BATCH_ID, {**_query("t", UNIT), "required": True}],
                "responses": {"200": _json(OBJECT, "counts"), **_errors(400, 404, 503)},
            }
        },
        "/api/v1/batches/{batch_id}/sample": {
            "get": {
                "summary": "random sample of unflagged images (quality control)",
                "parameters": [
                    BATCH_ID,
                    _query("n", {"type": "integer", "minimum": 1, "maximum": 200}),
                ],
                "responses": {"200": _json(OBJECT, "sample"), **_errors(400, 404, 503)},
            }
        },
        "/api/v1/laboratories": {
            "get": {
                "summary": "laboratories the caller administers (admin; a global admin: all)",
                "responses": {"200": _json(OBJECT, "laboratories"), **_errors(503)},
            },
            "post": {
                "summary": "create a laboratory (global admin)",
                "requestBody": _json_body(
                    {
                        "type": "object",
                        "required": ["name"],
                        "properties": {"name": {"type": "string"}},
                    }
                ),
                "responses": {"201": _json(OBJECT, "created"), **_errors(400, 503)},
            },
        },
        "/api/v1/users": {
            "get": {
                "summary": "users of the caller's laboratories (admin)",
                "responses": {"200": _json(OBJECT, "users"), **_errors(503)},
            },
            "post": {
                "summary": "create a user (admin)",
                "requestBody": _json_body(
                    {
                        "type": "object",
                        "required": ["name", "role", "password"],
                        "properties": {
                            "name": {"type": "string"},
                            "role": {"type": "string", "enum": ROLES},
                            "password": {"type": "string"},
                            "laboratory_id": {
                                "type": "integer",
                                "description": "default: the caller's own laboratory",
                            },
                            "global_admin": {
                                "type": "boolean",
                                "description": "admin of every laboratory (global admin only)",
                            },
                        },
                    }
                ),
                "responses": {"201": _json(OBJECT, "created"), **_errors(400, 404, 503)},
            },
        },
        "/api/v1/users/{user_id}": {
            "patch": {
                "summary": "change role, password, active flag or granted laboratories (admin)",
                "parameters": [_id("user_id")],
                "requestBody": _json_body(
                    {
                        "type": "object",
                        "properties": {
                            "role": {"type": "string", "enum": ROLES},
                            "password": {"type": "string"},
                            "active": {"type": "boolean"},
                            "laboratories": {
                                "type": "array",
                                "items": {"type": "integer"},
                                "description": "further laboratories the user works for "
                                "(global admin only)",
                            },
                        },
                    }
                ),
                "responses": {"200": _json(OBJECT, "updated"), **_errors(400, 404, 409, 503)},
            }
        },
        "/api/v1/tokens": {
            "get": {
                "summary": "API tokens, without their secrets (admin)",
                "responses": {"200": _json(OBJECT, "tokens"), **_errors(503)},
            }
        },
        "/api/v1/users/{user_id}/tokens": {
            "post": {
                "summary": "create a token; its secret is shown once (admin)",
                "parameters": [_id("user_id")],
                "requestBody": _json_body(
                    {"type": "object", "properties": {"label": {"type": "string"}}}
                ),
                "responses": {"201": _json(OBJECT, "token"), **_errors(400, 404, 503)},
            }
        },
        "/api/v1/tokens/{token_id}": {
            "delete": {
                "summary": "revoke a token (admin)",
                "parameters": [_id("token_id")],
                "responses": {"200": _json(OBJECT, "revoked"), **_errors(404, 503)},
            }
        },
        "/api/v1/audit": {
            "get": {
                "summary": "audit events, newest first (admin)",
                "parameters": [
                    _query("before_id", {"type": "integer", "minimum": 0, "maximum": MAX_ID}),
                    _query("limit", {"type": "integer", "minimum": 1, "maximum": 1000}),
                ],
                "responses": {"200": _json(OBJECT, "events"), **_errors(400, 503)},
            }
        },
    }


FHIR = {
    "type": "object",
    "required": ["resourceType"],
    "description": "FHIR R4 JSON (built and validated with fhir.resources)",
    "properties": {"resourceType": {"type": "string"}},
}
WEBHOOK = {
    "type": "object",
    "required": ["id", "url", "events", "active"],
    "properties": {
        "id": {"type": "integer"},
        "url": {"type": "string"},
        "events": {"type": "array", "items": {"type": "string"}},
        "active": {"type": "boolean"},
        "created_at": {"type": "string", "format": "date-time"},
        "secret": {"type": "string", "description": "only in the answer that creates it"},
    },
}
DELIVERY = {
    "type": "object",
    "required": ["id", "webhook_id", "event", "state", "attempts"],
    "properties": {
        "id": {"type": "string", "description": "the X-LeukoScreen-Delivery header"},
        "webhook_id": {"type": "integer"},
        "event": {"type": "string"},
        "subject": {"type": "string"},
        "state": {"type": "string", "enum": [s.value for s in DeliveryState]},
        "attempts": {"type": "integer"},
        "last_status": {"type": ["integer", "null"]},
        "last_error": {"type": ["string", "null"]},
        "created_at": {"type": "string"},
        "updated_at": {"type": "string"},
        "delivered_at": {"type": ["string", "null"]},
    },
}


def _fhir(description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/fhir+json": {"schema": FHIR}}}


def delivery_paths() -> dict[str, Any]:
    """Reports for other systems: FHIR (api/fhir.py) and webhooks (api/webhooks.py)."""
    return {
        "/api/v1/specimens/{specimen_id}/fhir": {
            "get": {
                "summary": "the FHIR DiagnosticReport of a signed specimen (latest sign-off)",
                "parameters": [
                    {
                        "name": "specimen_id",
                        "in": "path",
                        "required": True,
                        "schema": {"type": "string"},
                    },
                    SPECIMEN_LAB,
                ],
                "responses": {
                    "200": _fhir("DiagnosticReport with contained Specimen and Observations"),
                    **_errors(400, 404, 409, 503),
                },
            }
        },
        "/api/v1/batches/{batch_id}/fhir": {
            "get": {
                "summary": "a FHIR Bundle (collection) of the batch's signed specimens' reports",
                "parameters": [BATCH_ID],
                "responses": {"200": _fhir("Bundle"), **_errors(404, 503)},
            }
        },
        "/api/v1/webhooks": {
            "get": {
                "summary": "webhooks (admin)",
                "responses": {
                    "200": _json(
                        {
                            "type": "object",
                            "required": ["webhooks"],
                            "properties": {"webhooks": {"type": "array", "items": WEBHOOK}},
                        },
                        "webhooks",
                    ),
                    **_errors(503),
                },
            },
            "post": {
                "summary": "add a webhook; its signing secret is shown once (admin)",
                "requestBody": _json_body(
                    {
                        "type": "object",
                        "required": ["url", "events"],
                        "properties": {
                            "url": {"type": "string"},
                            "events": {
                                "type": "array",
                                "minItems": 1,
                                "items": {
                                    "type": "string",
                                    "enum": [e.value for e in WebhookEvent],
                                },
                            },
                        },
                    }
                ),
                "responses": {"201": _json(WEBHOOK, "created"), **_errors(400, 503)},
            },
        },
        "/api/v1/webhooks/{webhook_id}": {
            "delete": {
                "summary": "deactivate a webhook; its log stays (admin)",
                "parameters": [_id("webhook_id")],
                "responses": {"200": _json(WEBHOOK, "deactivated"), **_errors(404, 503)},
            }
        },
        "/api/v1/webhooks/{webhook_id}/deliveries": {
            "get": {
                "summary": "the delivery log of a webhook, newest first (admin)",
                "parameters": [
                    _id("webhook_id"),
                    _query("state", {"type": "string", "enum": [s.value for s in DeliveryState]}),
                    _query("limit", {"type": "integer", "minimum": 1, "maximum": 1000}),
                ],
                "responses": {
                    "200": _json(
                        {
                            "type": "object",
                            "required": ["webhook", "deliveries"],
                            "properties": {
                                "webhook": WEBHOOK,
                                "deliveries": {"type": "array", "items": DELIVERY},
                            },
                        },
                        "deliveries",
                    ),
                    **_errors(400, 404, 503),
                },
            }
        },
        "/api/v1/webhook-deliveries/{delivery_id}/resend": {
            "post": {
                "summary": "send a delivery again, same delivery id (admin)",
                "parameters": [
                    {
                        "name": "delivery_id",
                        "in": "path",
                        "required": True,
                        "schema": {"type": "string"},
                    }
                ],
                "responses": {"202": _json(DELIVERY, "queued"), **_errors(404, 409, 503)},
            }
        },
    }


@functools.cache
def spec() -> dict[str, Any]:
    intake_responses = {
        "202": _json(INTAKE, "batch accepted; scoring queued"),
        "422": _json(UNUSABLE, "no usable image; nothing recorded"),
        **_errors(400, 409, 413, 503, 507),
    }
    return {
        "openapi": "3.0.3",
        "info": {"title": "LeukoScreen API", "version": "1"},
        "components": {"securitySchemes": {"token": {"type": "http", "scheme": "bearer"}}},
        "security": [{"token": []}],
        "paths": {
            **review_and_account_paths(),
            **specimen_paths(),
            **delivery_paths(),
            "/healthz": {
                "get": {
                    "summary": "database and broker reachable",
                    "security": [],
                    "responses": {
                        "200": _json({"type": "object"}, "all reachable"),
                        "503": _json({"type": "object"}, "something is down"),
                    },
                }
            },
            "/readyz": {
                "get": {
                    "summary": "readiness: services up, a live worker on every queue scoring "
                    "and the reconciler need, queued work being taken",
                    "security": [],
                    "responses": {
                        "200": _json(READINESS, "ready"),
                        "503": _json(READINESS, "not ready; reasons says why"),
                    },
                }
            },
            "/api/v1/workers": {
                "get": {
                    "summary": "worker processes from their heartbeats, stale ones marked (admin)",
                    "responses": {"200": _json(WORKERS, "workers"), **_errors(403, 503)},
                }
            },
            "/api/v1/openapi.json": {
                "get": {
                    "summary": "this description",
                    "responses": {"200": _json({"type": "object"}, "OpenAPI document")},
                }
            },
            "/api/v1/batches": {
                "get": {
                    "summary": "recent batches",
                    "parameters": [
                        {
                            "name": "limit",
                            "in": "query",
                            "schema": {"type": "integer", "minimum": 1},
                        },
                        {
                            "name": "min_images",
                            "in": "query",
                            "description": "only batches of at least this many files "
                            "(2 hides one-image batches)",
                            "schema": {"type": "integer", "minimum": 0},
                        },
                    ],
                    "responses": {
                        "200": _json(
                            {
                                "type": "object",
                                "required": ["batches"],
                                "properties": {"batches": {"type": "array", "items": BATCH}},
                            },
                            "batches",
                        ),
                        **_errors(400, 503),
                    },
                },
                "post": {
                    "summary": "upload a new batch",
                    "parameters": [IDEMPOTENCY_KEY],
                    "requestBody": UPLOAD_BODY,
                    "responses": intake_responses,
                },
            },
            "/api/v1/batches/{batch_id}": {
                "get": {
                    "summary": "batch progress",
                    "parameters": [BATCH_ID],
                    "responses": {"200": _json(BATCH, "progress"), **_errors(404, 503)},
                }
            },
            "/api/v1/batches/{batch_id}/images": {
                "get": {
                    "summary": "the batch's files for its page: flagged and manual review "
                    "first, keyset-paged (next is the following page's cursor)",
                    "parameters": [
                        BATCH_ID,
                        {"name": "after", "in": "query", "schema": {"type": "string"}},
                        {
                            "name": "limit",
                            "in": "query",
                            "schema": {"type": "integer", "minimum": 1},
                        },
                    ],
                    "responses": {
                        "200": _json(
                            {
                                "type": "object",
                                "required": ["batch_id", "items", "next"],
                                "properties": {
                                    "batch_id": {"type": "string"},
                                    "items": {"type": "array", "items": LIST_ITEM},
                                    "next": {"type": ["string", "null"]},
                                },
                            },
                            "one page of files",
                        ),
                        **_errors(400, 404, 503),
                    },
                },
                "post": {
                    "summary": "add files to a batch",
                    "parameters": [BATCH_ID, IDEMPOTENCY_KEY],
                    "requestBody": UPLOAD_BODY,
                    "responses": {**intake_responses, **_errors(404)},
                },
            },
            "/api/v1/batches/{batch_id}/results": {
                "get": {
                    "summary": "a row per image; ?format=csv streams CSV",
                    "parameters": [
                        BATCH_ID,
                        {
                            "name": "format",
                            "in": "query",
                            "schema": {"type": "string", "enum": ["json", "csv"]},
                        },
                        {
                            "name": "after_id",
                            "in": "query",
                            "schema": {"type": "integer", "minimum": 0},
                        },
                        {
                            "name": "limit",
                            "in": "query",
                            "schema": {"type": "integer", "minimum": 1},
                        },
                    ],
                    "responses": {
                        "200": {
                            "description": "results",
                            "content": {
                                "application/json": {
                                    "schema": {
                                        "type": "object",
                                        "required": ["batch_id", "results"],
                                        "properties": {
                                            "batch_id": {"type": "string"},
                                            "total": {"type": "integer"},
                                            "next_after_id": {"type": "integer"},
                                            "results": {"type": "array", "items": RESULT_ROW},
                                        },
                                    }
                                },
                                "text/csv": {"schema": {"type": "string"}},
                            },
                        },
                        **_errors(400, 404, 503),
                    },
                }
            },
            "/api/v1/images/{image_id}": {
                "get": {
                    "summary": "the stored original",
                    "parameters": [
                        {
                            "name": "image_id",
                            "in": "path",
                            "required": True,
                            "schema": {"type": "integer"},
                        }
                    ],
                    "responses": {
                        "200": {
                            "description": "image bytes",
                            "content": {
                                t: {"schema": {"type": "string", "format": "binary"}}
                                for t in MIME_TYPES.values()
                            },
                        },
                        **_errors(404, 410, 503),
                    },
                }
            },
            "/api/v1/images/{image_id}/thumbnail": {
                "get": {
                    "summary": "a small JPEG preview of the stored original (batch page list)",
                    "parameters": [_id("image_id")],
                    "responses": {
                        "200": {
                            "description": "JPEG bytes, at most 128 pixels a side",
                            "content": {
                                "image/jpeg": {"schema": {"type": "string", "format": "binary"}}
                            },
                        },
                        **_errors(404, 503),
                    },
                }
            },
            "/api/v1/images/{image_id}/heatmap": {
                "get": {
                    "summary": "the explanation heatmap of the image's newest result (Grad-CAM)",
                    "description": "An RGBA PNG at the network's input size: colour and opacity "
                    "rise where the network's last convolutions raised the leukemia score. It "
                    "shows where the network looked, not proof of leukemia. Made by the "
                    "workers after scoring, for images that go to a person (flagged or manual "
                    "review); 404 until then and for cleared images.",
                    "parameters": [_id("image_id")],
                    "responses": {
                        "200": {
                            "description": "PNG bytes",
                            "content": {
                                "image/png": {"schema": {"type": "string", "format": "binary"}}
                            },
                        },
                        **_errors(404, 410, 503),
                    },
                },
                "post": {
                    "summary": "ask a worker for a missing heatmap (reviewers)",
                    "description": "For an image that goes to a person and has no heatmap "
                    "(scored before heatmaps existed, longer ago than the reconciler looks "
                    "back, or its task was lost). Asking again within a minute sends no new "
                    "task, so a page may ask every few seconds until the answer is 200. "
                    "workers_ready is false when no live worker runs the model version that "
                    "scored the image (only such a worker makes its heatmap). 409: the model "
                    "cleared the image.",
                    "parameters": [_id("image_id")],
                    "responses": {
                        "200": _json(
                            {
                                "type": "object",
                                "properties": {
                                    "state": {"type": "string", "enum": ["ready"]},
                                    "heatmap_url": {"type": "string"},
                                },
                            },
                            "it has one: its address",
                        ),
                        "202": _json(
                            {
                                "type": "object",
                                "properties": {
                                    "state": {"type": "string", "enum": ["requested"]},
                                    "workers_ready": {"type": "boolean"},
                                    "message": {"type": "string"},
                                },
                            },
                            "asked for",
                        ),
                        **_errors(403, 404, 409, 410, 503),
                    },
                },
            },
        },
    }


@bp.get("/api/v1/openapi.json")
def openapi_json():
    return jsonify(spec())
