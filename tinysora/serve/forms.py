"""Request bodies shared by the endpoints: JSON, a form, or multipart with named file
fields; pydantic validation whose errors name the field (FastAPI's 422 shape); the
OpenAPI description of such a body."""

from __future__ import annotations

from fastapi import HTTPException, Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ValidationError
from starlette.datastructures import UploadFile

FORMS = ("multipart/form-data", "application/x-www-form-urlencoded")


def field_error(field: str, msg: str, value=None) -> dict:
    """One entry of a 422's ``detail``, naming ``field`` of the body."""
    return {"type": "value_error", "loc": ("body", field), "msg": msg, "input": value}


def invalid(field: str, msg: str, value=None) -> RequestValidationError:
    return RequestValidationError([field_error(field, msg, value)])


async def read_body(
    request: Request, file_fields: tuple[str, ...], max_bytes: int
) -> tuple[dict, dict[str, UploadFile]]:
    """(fields, uploads) of a JSON object, a form, or multipart with ``file_fields``
    files; an empty form field means "not set". 413 over ``max_bytes``, 415 for other
    content types, 422 for a file in another field or a body that is not an object."""
    size = request.headers.get("content-length")
    if size is not None and size.isdigit() and int(size) > max_bytes:
        raise HTTPException(413, f"request body over {max_bytes} bytes")
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    uploads: dict[str, UploadFile] = {}
    if kind in FORMS:
        form = await request.form(max_files=len(file_fields), max_fields=32)
        fields: dict = {}
        for key, value in form.multi_items():
            if isinstance(value, UploadFile):
                if key not in file_fields:
                    raise invalid(key, f"not a file field (those are {', '.join(file_fields)})")
                uploads[key] = value
            elif value != "":
                fields[key] = value
        return fields, uploads
    if kind == "application/json":
        try:
            fields = await request.json()
        except ValueError:
            raise invalid("body", "not valid JSON") from None
        if not isinstance(fields, dict):
            raise invalid("body", "must be a JSON object")
        return fields, uploads
    raise HTTPException(
        415, f"send application/json, or multipart/form-data with {' / '.join(file_fields)} files"
    )


def validated(model: type[BaseModel], fields: dict) -> BaseModel:
    """``model`` of ``fields``, or a 422 whose errors name the body's fields."""
    try:
        return model.model_validate(fields)
    except ValidationError as e:
        raise RequestValidationError(
            [{**err, "loc": ("body", *err["loc"])} for err in e.errors(include_url=False)]
        ) from None


def body_doc(model: type[BaseModel], file_fields: tuple[str, ...], required: str) -> dict:
    """``openapi_extra`` of an endpoint that reads its body with ``read_body``."""
    files = {f: {"type": "string", "format": "binary"} for f in file_fields}
    form = {
        "type": "object",
        "description": "the JSON fields as form fields, plus files",
        "properties": {**files, required: {"type": "string"}},
        "required": [required],
    }
    return {
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {"schema": model.model_json_schema()},
                "multipart/form-data": {"schema": form},
            },
        }
    }
