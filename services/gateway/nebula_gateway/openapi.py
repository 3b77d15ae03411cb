"""The OpenAPI 3.1 document of what the gateway serves (``GET /openapi.json``).

Request schemas follow OpenAI's components (CreateChatCompletionRequest,
CreateCompletionRequest, CreateEmbeddingRequest, CreateResponse), reduced to
the fields Nebula validates and forwards, with the same bounds as
:mod:`validation` so that a generated request the schema calls valid is one
the gateway accepts. Written out here rather than loaded from OpenAI's 3 MB
file, which a deployed gateway does not ship.
"""

from __future__ import annotations

from typing import Any

_REF_ERROR = {"$ref": "#/components/schemas/ErrorResponse"}


def _error(description: str) -> dict[str, Any]:
    return {"description": description,
            "content": {"application/json": {"schema": _REF_ERROR}}}


def _errors(*statuses: int) -> dict[str, Any]:
    texts = {400: "Invalid request", 401: "Missing or unknown API key",
             403: "Model not allowed for this key", 404: "Unknown model",
             413: "Body too large", 429: "Rate or concurrency limit",
             408: "Body not received in time", 502: "Upstream failure",
             503: "No router or replica available", 504: "No answer in time"}
    return {str(s): _error(texts[s]) for s in statuses}


_SAMPLING: dict[str, Any] = {
    "stream": {"type": ["boolean", "null"]},
    "stream_options": {"type": ["object", "null"],
                       "properties": {"include_usage": {"type": "boolean"}}},
    "temperature": {"type": ["number", "null"], "minimum": 0, "maximum": 2},
    "top_p": {"type": ["number", "null"], "minimum": 0, "maximum": 1},
    "max_tokens": {"type": ["integer", "null"], "minimum": 1},
    "n": {"type": ["integer", "null"], "minimum": 1, "maximum": 128},
    "stop": {"anyOf": [{"type": "string"},
                       {"type": "array", "items": {"type": "string"}, "maxItems": 16},
                       {"type": "null"}]},
    "presence_penalty": {"type": ["number", "null"], "minimum": -2, "maximum": 2},
    "frequency_penalty": {"type": ["number", "null"], "minimum": -2, "maximum": 2},
    "seed": {"type": ["integer", "null"], "minimum": -(2**63), "maximum": 2**63 - 1},
    "user": {"type": "string"},
}

_MODEL = {"type": "string", "minLength": 1, "maxLength": 256,
          "description": "A placed model's name or uid (GET /v1/models)"}

_CHAT_TOOL = {
    "type": "object", "required": ["type", "function"],
    "properties": {"type": {"const": "function"},
                   "function": {"type": "object", "required": ["name"],
                                "properties": {"name": {"type": "string", "minLength": 1},
                                               "description": {"type": "string"},
                                               "parameters": {"type": "object"},
                                               "strict": {"type": ["boolean", "null"]}}}},
}

_TOOL_CHOICE = {"anyOf": [{"enum": ["none", "auto", "required"]},
                          {"type": "object", "required": ["type"],
                           "properties": {"type": {"enum": ["function"]}}}]}

SCHEMAS: dict[str, Any] = {
    "ErrorResponse": {
        "type": "object", "required": ["error"],
        "properties": {"error": {
            "type": "object", "required": ["message", "type"],
            "properties": {"message": {"type": "string"}, "type": {"type": "string"},
                           "param": {"type": ["string", "null"]},
                           "code": {"type": ["string", "null"]}}}},
    },
    "ChatMessage": {
        "type": "object", "required": ["role", "content"],
        "properties": {
            "role": {"enum": ["system", "user", "assistant", "tool", "developer"]},
            "content": {"anyOf": [
                {"type": "string"},
                {"type": "array", "items": {
                    "type": "object", "required": ["type", "text"],
                    "properties": {"type": {"const": "text"}, "text": {"type": "string"}}}}]},
            "name": {"type": "string"},
            "tool_call_id": {"type": "string"},
        },
    },
    "CreateChatCompletionRequest": {
        "type": "object", "required": ["model", "messages"],
        "properties": {
            "model": _MODEL,
            "messages": {"type": "array", "minItems": 1,
                         "items": {"$ref": "#/components/schemas/ChatMessage"}},
            **_SAMPLING,
            "max_completion_tokens": {"type": ["integer", "null"], "minimum": 1},
            "logprobs": {"type": ["boolean", "null"]},
            "top_logprobs": {"type": ["integer", "null"], "minimum": 0, "maximum": 20},
            "tools": {"type": "array", "items": _CHAT_TOOL},
            "tool_choice": _TOOL_CHOICE,
            "response_format": {"type": "object", "required": ["type"],
                                "properties": {"type": {"enum": ["text", "json_object"]}}},
        },
    },
    "CreateCompletionRequest": {
        "type": "object", "required": ["model", "prompt"],
        "properties": {
            "model": _MODEL,
            "prompt": {"anyOf": [{"type": "string"},
                                 {"type": "array", "minItems": 1, "items": {"type": "string"}},
                                 {"type": "array", "minItems": 1,
                                  "items": {"type": "integer"}}]},
            **_SAMPLING,
            "logprobs": {"type": ["integer", "null"], "minimum": 0, "maximum": 20},
            "echo": {"type": ["boolean", "null"]},
            "suffix": {"type": ["string", "null"]},
        },
    },
    "CreateEmbeddingRequest": {
        "type": "object", "required": ["model", "input"],
        "properties": {
            "model": _MODEL,
            "input": {"anyOf": [{"type": "string", "minLength": 1},
                                {"type": "array", "minItems": 1, "items": {"type": "string"}},
                                {"type": "array", "minItems": 1,
                                 "items": {"type": "integer"}}]},
            "encoding_format": {"enum": ["float", "base64"]},
            "dimensions": {"type": "integer", "minimum": 1},
            "user": {"type": "string"},
        },
    },
    "ResponseInputItem": {
        "type": "object", "required": ["role", "content"],
        "properties": {
            "type": {"const": "message"},
            "role": {"enum": ["user", "system", "developer", "assistant"]},
            "content": {"anyOf": [
                {"type": "string"},
                {"type": "array", "items": {
                    "type": "object", "required": ["type", "text"],
                    "properties": {"type": {"enum": ["input_text", "output_text"]},
                                   "text": {"type": "string"}}}}]},
        },
    },
    "CreateResponse": {
        "type": "object", "required": ["model", "input"],
        "properties": {
            "model": _MODEL,
            "input": {"anyOf": [{"type": "string"},
                                {"type": "array",
                                 "items": {"$ref": "#/components/schemas/ResponseInputItem"}}]},
            "instructions": {"type": ["string", "null"]},
            "stream": {"type": ["boolean", "null"]},
            "store": {"type": ["boolean", "null"]},
            "temperature": {"type": ["number", "null"], "minimum": 0, "maximum": 2},
            "top_p": {"type": ["number", "null"], "minimum": 0, "maximum": 1},
            "max_output_tokens": {"type": ["integer", "null"], "minimum": 1},
            "previous_response_id": {"type": ["string", "null"], "minLength": 1},
            "tools": {"type": "array", "items": {
                "type": "object", "required": ["type", "name"],
                "properties": {"type": {"const": "function"},
                               "name": {"type": "string", "minLength": 1},
                               "parameters": {"type": "object"}}}},
            "tool_choice": _TOOL_CHOICE,
            "text": {"type": "object", "properties": {"format": {
                "type": "object", "required": ["type"],
                "properties": {"type": {"enum": ["text", "json_object"]}}}}},
        },
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


def openapi_document() -> dict[str, Any]:
    """The document served at ``/openapi.json``."""
    text_ok = {"description": "OK", "content": {"text/plain": {"schema": {"type": "string"}}}}
    return {
        "openapi": "3.1.0",
        "info": {"title": "Nebula gateway", "version": "0.1.0",
                 "description": "OpenAI-compatible API served by Nebula."},
        "servers": [{"url": "/"}],
        "paths": {
            "/v1/chat/completions": _post("createChatCompletion", "Chat completion",
                                          "CreateChatCompletionRequest"),
            "/v1/completions": _post("createCompletion", "Text completion",
                                     "CreateCompletionRequest"),
            "/v1/embeddings": _post("createEmbedding", "Embeddings", "CreateEmbeddingRequest"),
            "/v1/responses": _post("createResponse", "Responses API", "CreateResponse"),
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
            "/healthz": {"get": {"operationId": "healthz", "responses": {"200": text_ok}}},
            "/readyz": {"get": {"operationId": "readyz", "responses": {
                "200": text_ok, "503": {"description": "No router reachable",
                                        "content": {"text/plain": {
                                            "schema": {"type": "string"}}}}}}},
            "/metrics": {"get": {"operationId": "metrics", "responses": {"200": text_ok}}},
        },
        "components": {
            "schemas": SCHEMAS,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
        "security": [{"bearer": []}, {}],
    }
