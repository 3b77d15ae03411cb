"""The OpenAPI 3.1 document of what the gateway serves (``GET /openapi.json``).

The request schemas are generated from the request contract (:mod:`contract`),
the same specs :mod:`validation` checks, under OpenAI's component names
(CreateChatCompletionRequest, ...): a request the schema calls valid is one the
gateway accepts, and the reverse. Written here rather than loaded from OpenAI's
3 MB file, which a deployed gateway does not ship.
"""

from __future__ import annotations

from typing import Any

from .contract import ENDPOINTS

_REF_ERROR = {"$ref": "#/components/schemas/ErrorResponse"}


def _error(description: str) -> dict[str, Any]:
    return {"description": description,
            "content": {"application/json": {"schema": _REF_ERROR}}}


def _errors(*statuses: int) -> dict[str, Any]:
    texts = {400: "Invalid request", 401: "Missing or unknown API key",
             403: "Model not allowed for this key", 404: "Unknown model or response",
             413: "Body too large", 429: "Rate or concurrency limit",
             408: "Body not received in time", 502: "Upstream failure",
             503: "No router or replica available", 504: "No answer in time"}
    return {str(s): _error(texts[s]) for s in statuses}


_SCHEMAS: dict[str, Any] = {
    "ErrorResponse": {
        "type": "object", "required": ["error"],
        "properties": {"error": {
            "type": "object", "required": ["message", "type"],
            "properties": {"message": {"type": "string"}, "type": {"type": "string"},
                           "param": {"type": ["string", "null"]},
                           "code": {"type": ["string", "null"]}}}},
    },
    "Model": {
        "type": "object", "required": ["id", "object", "created", "owned_by"],
        "properties": {"id": {"type": "string"}, "object": {"const": "model"},
                       "created": {"type": "integer"}, "owned_by": {"type": "string"}},
    },
    "ListModelsResponse": {
        "type": "object", "required": ["object", "data"],
        "properties": {"object": {"const": "list"},
                       "data": {"type": "array",
                                "items": {"$ref": "#/components/schemas/Model"}}},
    },
}


def _post(operation_id: str, summary: str, schema: str) -> dict[str, Any]:
    return {"post": {
        "operationId": operation_id, "summary": summary,
        "requestBody": {"required": True, "content": {"application/json": {
            "schema": {"$ref": f"#/components/schemas/{schema}"}}}},
        "responses": {
            "200": {"description": "JSON object, or an SSE stream when `stream` is true",
                    "content": {"application/json": {"schema": {"type": "object"}},
                                "text/event-stream": {"schema": {"type": "string"}}}},
            **_errors(400, 401, 403, 404, 408, 413, 429, 502, 503, 504)},
    }}


_RESPONSE_ID = {"name": "response_id", "in": "path", "required": True,
                "schema": {"type": "string"}}


def _json_ok(schema: dict[str, Any]) -> dict[str, Any]:
    return {"200": {"description": "OK", "content": {"application/json": {"schema": schema}}},
            **_errors(401, 404)}


def _stored_responses() -> dict[str, Any]:
    """The stored-response paths (``store`` not false; kept per key, for a while)."""
    query = [{"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1,
                                                         "maximum": 100, "default": 20}},
             {"name": "order", "in": "query",
              "schema": {"enum": ["asc", "desc"], "default": "desc"}},
             {"name": "after", "in": "query", "schema": {"type": "string"}}]
    return {
        "/v1/responses/{response_id}": {
            "get": {"operationId": "getResponse", "summary": "A stored response",
                    "parameters": [_RESPONSE_ID], "responses": _json_ok({"type": "object"})},
            "delete": {"operationId": "deleteResponse", "summary": "Forget a stored response",
                       "parameters": [_RESPONSE_ID], "responses": _json_ok({
                           "type": "object", "required": ["id", "object", "deleted"],
                           "properties": {"id": {"type": "string"},
                                          "object": {"const": "response"},
                                          "deleted": {"type": "boolean"}}})}},
        "/v1/responses/{response_id}/input_items": {
            "get": {"operationId": "listInputItems", "summary": "A stored response's input",
                    "parameters": [_RESPONSE_ID, *query], "responses": _json_ok({
                        "type": "object", "required": ["object", "data", "has_more"],
                        "properties": {"object": {"const": "list"},
                                       "data": {"type": "array", "items": {"type": "object"}},
                                       "first_id": {"type": ["string", "null"]},
                                       "last_id": {"type": ["string", "null"]},
                                       "has_more": {"type": "boolean"}}})}},
    }


def schemas() -> dict[str, Any]:
    """``components.schemas``: the requests (from the contract), errors and models."""
    return {**{e.schema_name: e.body.schema() for e in ENDPOINTS.values()}, **_SCHEMAS}


def openapi_document() -> dict[str, Any]:
    """The document served at ``/openapi.json``."""
    text_ok = {"description": "OK", "content": {"text/plain": {"schema": {"type": "string"}}}}
    return {
        "openapi": "3.1.0",
        "info": {"title": "Nebula gateway", "version": "0.1.0",
                 "description": "OpenAI-compatible API served by Nebula."},
        "servers": [{"url": "/"}],
        "paths": {
            **{e.path: _post(e.operation_id, e.summary, e.schema_name)
               for e in ENDPOINTS.values()},
            "/v1/models": {"get": {
                "operationId": "listModels", "summary": "Placed models",
                "responses": {"200": {"description": "OK", "content": {"application/json": {
                    "schema": {"$ref": "#/components/schemas/ListModelsResponse"}}}},
                    **_errors(401, 429, 503)}}},
            "/v1/models/{model}": {"get": {
                "operationId": "retrieveModel", "summary": "One placed model",
                "parameters": [{"name": "model", "in": "path", "required": True,
                                "schema": {"type": "string"}}],
                "responses": {"200": {"description": "OK", "content": {"application/json": {
                    "schema": {"$ref": "#/components/schemas/Model"}}}},
                    **_errors(401, 403, 404, 429, 503)}}},
            **_stored_responses(),
            "/healthz": {"get": {"operationId": "healthz", "responses": {"200": text_ok}}},
            "/readyz": {"get": {"operationId": "readyz", "responses": {
                "200": text_ok, "503": {"description": "No router reachable",
                                        "content": {"text/plain": {
                                            "schema": {"type": "string"}}}}}}},
            "/metrics": {"get": {"operationId": "metrics", "responses": {"200": text_ok}}},
        },
        "components": {
            "schemas": schemas(),
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
        "security": [{"bearer": []}, {}],
    }
