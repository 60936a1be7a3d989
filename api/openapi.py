"""The OpenAPI document as SDK generators need it: file fields as binary, binary responses with
a schema, and every validation error described as the problem+json it really is."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

BINARY = {"type": "string", "format": "binary"}
PROBLEM_REF = {"$ref": "#/components/schemas/Problem"}


def _binary_fields(node: Any) -> None:
    """UploadFile properties become `format: binary` (what generators turn into files)."""
    if isinstance(node, dict):
        if node.get("contentMediaType") == "application/octet-stream":
            node.pop("contentMediaType")
            node["format"] = "binary"
        for value in node.values():
            _binary_fields(value)
    elif isinstance(node, list):
        for value in node:
            _binary_fields(value)


def build_openapi(app: FastAPI) -> dict[str, Any]:
    """Generate once, patch, cache."""
    if app.openapi_schema:
        return app.openapi_schema
    schema = get_openapi(
        title=app.title,
        version=app.version,
        description=app.description,
        routes=app.routes,
        tags=TAGS,
    )
    _binary_fields(schema.get("components", {}).get("schemas", {}))
    for path in schema.get("paths", {}).values():
        for op in path.values():
            for code, response in op.get("responses", {}).items():
                content = response.get("content", {})
                for media, body in content.items():
                    if media != "application/json" and "schema" not in body:
                        body["schema"] = (
                            dict(BINARY) if not media.startswith("text/") else {"type": "string"}
                        )
                is_error = str(code).startswith(("4", "5"))
                says_problem = any(b.get("schema") == PROBLEM_REF for b in content.values())
                if code == "422" or (is_error and says_problem):
                    response["content"] = {"application/problem+json": {"schema": PROBLEM_REF}}
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    for name in ("HTTPValidationError", "ValidationError"):
        components.pop(name, None)
    app.openapi_schema = schema
    return schema


TAGS = [
    {
        "name": "datasets",
        "description": "Import labelled images (DIGITS folder and textfile "
        "methods) and explore them",
    },
    {"name": "jobs", "description": "Training jobs: submit, sweep, follow, abort, clone"},
    {
        "name": "models",
        "description": "Use trained models: classify, evaluate, download, pretrained models",
    },
    {"name": "catalog", "description": "Networks and learning-rate policies"},
    {"name": "fleet", "description": "Workers, GPUs and the queue"},
    {"name": "users", "description": "Users and API tokens"},
    {"name": "health", "description": "Health and Prometheus metrics"},
]
