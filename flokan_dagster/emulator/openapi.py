"""The hand-written OpenAPI 3 document of what the emulator serves publicly: the five Image
Editor endpoints on the API origin and the presigned PUT on the storage origin.

Example:
    >>> doc = openapi_document("http://127.0.0.1:8000/api/v1/image-editor", "http://127.0.0.1:8001")
    >>> sorted(doc["paths"])
    ['/estimate-credits', '/jobs', '/jobs/{jobId}', '/process', '/upload-url', '/upload/{image_id}']
"""

from __future__ import annotations

from typing import Any

from flokan_dagster.emulator.validation import (
    FILE_NAME_MAX,
    IMAGE_URL_MAX,
    JOB_STATUSES,
    MIME_TYPES,
    MODEL_TIERS,
    PER_PAGE_MAX,
    PROMPT_MAX,
    PROVIDERS,
)

_UUID = {"type": "string", "format": "uuid"}
_NULLABLE_UUID = {"type": "string", "format": "uuid", "nullable": True}
_TIER = {"type": "string", "enum": list(MODEL_TIERS)}
_PROVIDER = {"type": "string", "enum": list(PROVIDERS), "default": "platform"}
_TIMESTAMP = {"type": "string", "format": "date-time", "example": "2026-04-12T09:00:00.000Z"}
_RATE_HEADERS = {
    name: {"description": text, "schema": {"type": "integer"}}
    for name, text in (
        ("X-RateLimit-Limit", "Requests allowed per minute for the workspace's plan."),
        ("X-RateLimit-Remaining", "Requests left in the current one-minute window."),
        ("X-RateLimit-Reset", "Seconds until the window resets."),
    )
}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _errors(*codes: int) -> dict[str, Any]:
    meaning = {
        400: "Validation error (the message names the field and the rule).",
        401: "Missing or invalid API key.",
        402: "Insufficient AI credits.",
        403: "Missing image_editor scope or access_image_editor permission.",
        404: "image_id, style_id, character_id or jobId not found in this workspace.",
        422: "Safety filter rejected the prompt, or the BYOK provider is not configured and enabled.",
        429: "Rate limit; see Retry-After and X-RateLimit-*.",
        500: "Unexpected server or provider error.",
    }
    out: dict[str, Any] = {}
    for code in codes:
        headers = dict(_RATE_HEADERS)
        if code == 429:
            headers["Retry-After"] = {"description": "Seconds to wait.", "schema": {"type": "integer"}}
        out[str(code)] = {
            "description": meaning[code],
            "headers": headers,
            "content": {"application/json": {"schema": _ref("Error")}},
        }
    return out


def _ok(code: int, description: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {str(code): {"description": description, "headers": _RATE_HEADERS,
                        "content": {"application/json": {"schema": schema}}}}


def _envelope(data: dict[str, Any]) -> dict[str, Any]:
    return {"type": "object", "required": ["success", "data"],
            "properties": {"success": {"type": "boolean", "enum": [True]}, "data": data}}


def _body(schema: dict[str, Any]) -> dict[str, Any]:
    return {"required": True, "content": {"application/json": {"schema": schema}}}


def _schemas() -> dict[str, Any]:
    job_properties = {
        "job_id": _UUID,
        "status": {"type": "string", "enum": list(JOB_STATUSES)},
        "prompt": {"type": "string"},
        "model_tier": _TIER,
        "provider": {"type": "string", "enum": list(PROVIDERS)},
        "provider_used": {"type": "string", "description": "'system' for platform calls, else the BYOK provider."},
        "image_id": _NULLABLE_UUID,
        "image_url": {"type": "string", "nullable": True},
        "style_id": _NULLABLE_UUID,
        "character_id": _NULLABLE_UUID,
        "result_url": {"type": "string", "format": "uri", "nullable": True},
        "result_image_id": _NULLABLE_UUID,
        "credits_consumed": {"type": "integer"},
        "processing_ms": {"type": "integer", "nullable": True},
        "error": {"type": "string", "nullable": True},
        "created_at": _TIMESTAMP,
        "completed_at": {**_TIMESTAMP, "nullable": True},
    }
    return {
        "Error": {"type": "object", "required": ["success", "error"],
                  "properties": {"success": {"type": "boolean", "enum": [False]}, "error": {"type": "string"}}},
        "Job": {"type": "object", "required": list(job_properties), "properties": job_properties},
        "ProcessRequest": {
            "type": "object",
            "required": ["prompt", "model_tier"],
            "properties": {
                "prompt": {"type": "string", "minLength": 1, "maxLength": PROMPT_MAX},
                "model_tier": _TIER,
                "image_id": _UUID,
                "image_url": {"type": "string", "format": "uri", "maxLength": IMAGE_URL_MAX,
                              "pattern": "^https://", "description": "Ignored when image_id is set."},
                "style_id": _UUID,
                "character_id": _UUID,
                "provider": {**_PROVIDER, "description": (
                    "BYOK tiers: openai pro|standard; google pro; fal and kie any tier.")},
            },
        },
        "ProcessResult": {
            "type": "object",
            "properties": {k: job_properties[k] for k in (
                "job_id", "status", "result_url", "result_image_id", "model_tier", "provider_used",
                "credits_consumed", "processing_ms", "created_at", "completed_at")},
        },
        "UploadRequest": {
            "type": "object",
            "required": ["file_name", "mime_type"],
            "properties": {
                "file_name": {"type": "string", "minLength": 1, "maxLength": FILE_NAME_MAX},
                "mime_type": {"type": "string", "enum": list(MIME_TYPES)},
                "file_size": {"type": "integer", "minimum": 0},
            },
        },
        "Upload": {"type": "object", "properties": {
            "image_id": _UUID, "upload_url": {"type": "string", "format": "uri"},
            "public_url": {"type": "string", "format": "uri"}, "expires_in": {"type": "integer"}}},
        "EstimateRequest": {"type": "object", "required": ["model_tier"],
                            "properties": {"model_tier": _TIER, "provider": _PROVIDER}},
        "Estimate": {"type": "object", "properties": {
            "model_tier": _TIER, "provider": {"type": "string"}, "estimated_credits": {"type": "integer"},
            "is_exact": {"type": "boolean"}, "available_credits": {"type": "integer"},
            "can_proceed": {"type": "boolean"}, "byok_skips_credits": {"type": "boolean"}}},
        "ListMeta": {"type": "object", "properties": {
            "page": {"type": "integer"}, "per_page": {"type": "integer"},
            "total": {"type": "integer"}, "total_pages": {"type": "integer"}}},
    }


def openapi_document(base_url: str, storage_url: str) -> dict[str, Any]:
    """Return the OpenAPI 3.0 document for an emulator serving at ``base_url``/``storage_url``."""
    auth_errors = (401, 403, 429, 500)
    return {
        "openapi": "3.0.3",
        "info": {"title": "Flokan Image Editor API (local emulator)", "version": "1.0.0",
                 "description": "Parts A and B of flokan-api.md, as served by flokan-emulator."},
        "servers": [{"url": base_url}],
        "security": [{"bearerAuth": []}],
        "paths": {
            "/upload-url": {"post": {
                "operationId": "createUploadUrl", "summary": "Presigned upload URL",
                "requestBody": _body(_ref("UploadRequest")),
                "responses": {**_ok(201, "Upload URL created.", _envelope(_ref("Upload"))),
                              **_errors(400, *auth_errors)}}},
            "/upload/{image_id}": {"put": {
                "operationId": "uploadImage", "summary": "PUT the file bytes to a presigned upload URL",
                "servers": [{"url": storage_url}], "security": [],
                "parameters": [
                    {"name": "image_id", "in": "path", "required": True, "schema": _UUID},
                    {"name": "expires", "in": "query", "required": True, "schema": {"type": "integer"}},
                    {"name": "signature", "in": "query", "required": True, "schema": {"type": "string"}},
                ],
                "requestBody": {"required": True, "content": {m: {"schema": {"type": "string", "format": "binary"}}
                                                              for m in MIME_TYPES}},
                "responses": {
                    "200": {"description": "Stored."},
                    "400": {"description": "Content-Type differs from the declared mime_type, or the bytes are "
                                           "not an image of that type."},
                    "403": {"description": "Expired or tampered URL."},
                    "413": {"description": "Larger than the size limit."},
                }}},
            "/process": {"post": {
                "operationId": "process", "summary": "Generate or edit an image (synchronous)",
                "requestBody": _body(_ref("ProcessRequest")),
                "responses": {**_ok(201, "Job completed.", _envelope(_ref("ProcessResult"))),
                              **_errors(400, 401, 402, 403, 404, 422, 429, 500)}}},
            "/estimate-credits": {"post": {
                "operationId": "estimateCredits", "summary": "Upper bound of a /process charge",
                "requestBody": _body(_ref("EstimateRequest")),
                "responses": {**_ok(200, "Estimate.", _envelope(_ref("Estimate"))),
                              **_errors(400, 422, *auth_errors)}}},
            "/jobs": {"get": {
                "operationId": "listJobs", "summary": "List jobs, most recent first",
                "parameters": [
                    {"name": "page", "in": "query", "schema": {"type": "integer", "minimum": 1, "default": 1}},
                    {"name": "per_page", "in": "query",
                     "schema": {"type": "integer", "minimum": 1, "maximum": PER_PAGE_MAX, "default": 50}},
                    {"name": "status", "in": "query", "schema": {"type": "string", "enum": list(JOB_STATUSES)}},
                ],
                "responses": {**_ok(200, "One page of jobs.", {
                    **_envelope({"type": "array", "items": _ref("Job")}),
                    "required": ["success", "data", "meta"],
                    "properties": {"success": {"type": "boolean", "enum": [True]},
                                   "data": {"type": "array", "items": _ref("Job")}, "meta": _ref("ListMeta")}}),
                    **_errors(400, *auth_errors)}}},
            "/jobs/{jobId}": {"get": {
                "operationId": "getJob", "summary": "One job",
                "parameters": [{"name": "jobId", "in": "path", "required": True, "schema": _UUID}],
                "responses": {**_ok(200, "The job's full row.", _envelope(_ref("Job"))),
                              **_errors(404, *auth_errors)}}},
        },
        "components": {
            "securitySchemes": {"bearerAuth": {"type": "http", "scheme": "bearer",
                                               "description": "flk_<key> with the image_editor scope"}},
            "schemas": _schemas(),
        },
    }
