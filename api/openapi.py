"""The OpenAPI 3 description of the JSON API, served at /api/v1/openapi.json.

Kept beside the routes it describes; tests check that every route is described and that
schemathesis finds no server error and no response outside these schemas.
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, jsonify

bp = Blueprint("openapi", __name__)
MAX_ID = 2**63 - 1

ERROR = {
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
        "reason": {"type": "string"},
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
UNUSABLE = {
    "type": "object",
    "required": ["error", "status", "files"],
    "properties": {**ERROR["properties"], "files": {"type": "array", "items": FILE_ROW}},
}
STATE_COUNTS = {
    "type": "object",
    "properties": {
        s: {"type": "integer"} for s in ("queued", "scoring", "scored", "failed", "rejected")
    },
}
BATCH = {
    "type": "object",
    "required": ["id", "name", "state", "total", "done", "pending", "failed", "counts"],
    "properties": {
        "id": {"type": "string"},
        "name": {"type": "string"},
        "submitted_by": {"type": "string"},
        "created_at": {"type": "string", "format": "date-time"},
        "state": {"type": "string", "enum": ["scoring", "complete"]},
        "counts": STATE_COUNTS,
        "total": {"type": "integer"},
        "done": {"type": "integer"},
        "pending": {"type": "integer"},
        "failed": {"type": "integer"},
        "rejected": {"type": "integer"},
        "flagged": {"type": "integer"},
        "progress": {"type": "number"},
        "eta_seconds": {"type": ["number", "null"]},
        "results_url": {"type": "string"},
    },
}
RESULT_ROW = {
    "type": "object",
    "required": ["image_id", "file_name", "sha256", "state"],
    "properties": {
        "image_id": {"type": "integer"},
        "file_name": {"type": "string"},
        "sha256": {"type": "string"},
        "state": {"type": "string"},
        "p_leukemia": {"type": ["number", "null"]},
        "flagged": {"type": ["boolean", "null"]},
        "threshold": {"type": ["number", "null"]},
        "model_version": {"type": ["string", "null"]},
        "model_sha256": {"type": ["string", "null"]},
        "scored_at": {"type": ["string", "null"]},
        "error": {"type": ["string", "null"]},
    },
}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _errors(*codes: int) -> dict[str, Any]:
    text = {
        400: "bad request",
        404: "not found",
        413: "request too large",
        422: "nothing usable",
        503: "a dependency is down",
        507: "storage full",
    }
    return {str(c): _json(ERROR, text[c]) for c in codes}


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
                    "submitted_by": {"description": "who submits (text)"},
                },
            }
        }
    },
}
BATCH_ID = {"name": "batch_id", "in": "path", "required": True, "schema": {"type": "string"}}


def spec() -> dict[str, Any]:
    intake_responses = {
        "202": _json(INTAKE, "batch accepted; scoring queued"),
        "422": _json(UNUSABLE, "no usable image; nothing recorded"),
        **_errors(400, 413, 503, 507),
    }
    return {
        "openapi": "3.0.3",
        "info": {"title": "LeukoScreen intake API", "version": "1"},
        "paths": {
            "/healthz": {
                "get": {
                    "summary": "database and broker reachable",
                    "responses": {
                        "200": _json({"type": "object"}, "all reachable"),
                        "503": _json({"type": "object"}, "something is down"),
                    },
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
                        }
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
                "post": {
                    "summary": "add files to a batch",
                    "parameters": [BATCH_ID],
                    "requestBody": UPLOAD_BODY,
                    "responses": {**intake_responses, **_errors(404)},
                }
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
                                        "required": ["batch_id", "total", "results"],
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
                                for t in ("image/jpeg", "image/png", "image/bmp", "image/tiff")
                            },
                        },
                        **_errors(404, 503),
                    },
                }
            },
        },
    }


@bp.get("/api/v1/openapi.json")
def openapi_json():  # type: ignore[no-untyped-def]
    return jsonify(spec())
