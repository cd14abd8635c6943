"""Reading POST /v1/videos/{video_id}/remix: OpenAI's one field, as JSON (what its SDK sends) or a form."""

from __future__ import annotations

from fastapi import Request
from pydantic import BaseModel, ConfigDict, ValidationError

from serve.api.create_request import read_create_body
from serve.api.errors import APIError


class RemixVideoFields(BaseModel):
    """Everything else (model, size, seconds, seed, post-processing) is the source video's."""

    model_config = ConfigDict(extra="forbid")

    prompt: str


async def read_remix_fields(request: Request, max_bytes: int) -> RemixVideoFields:
    data, image = await read_create_body(request, max_bytes)
    if image is not None:
        raise APIError(400, "input_reference: a remix keeps its source video's input image; send only prompt",
                       param="input_reference", code="invalid_value")
    try:
        return RemixVideoFields.model_validate(data)
    except ValidationError as error:
        first = error.errors()[0]
        param = ".".join(str(part) for part in first["loc"]) or None
        extra = first["type"] == "extra_forbidden"
        message = "is not a field of a remix (it takes only prompt)" if extra else first["msg"]
        raise APIError(400, f"{param}: {message}", param=param, code="invalid_value") from None
