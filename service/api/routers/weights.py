"""/weights: upload base weights (safetensors only) for jobs to reference as `upload:<id>`."""

from __future__ import annotations

import uuid

from fastapi import APIRouter, HTTPException, Request, status
from pydantic import BaseModel, ConfigDict
from safetensors import SafetensorError, safe_open

from service.api import examples
from service.api.deps import SettingsDep, Writer

router = APIRouter(prefix="/weights", tags=["weights"])


class WeightsOut(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [examples.WEIGHTS]})

    id: str
    reference: str
    size: int
    tensors: int


@router.post("", status_code=status.HTTP_201_CREATED, response_model=WeightsOut,
             responses={400: {"description": "empty, or not a safetensors file"}, 401: {}, 403: {},
                        413: {"description": "larger than max_upload_bytes"}},
             openapi_extra={"requestBody": {"content": {"application/octet-stream": {}}, "required": True}})
async def upload(request: Request, settings: SettingsDep, _: Writer) -> WeightsOut:
    """The raw safetensors bytes as the body. Nothing is unpickled: a file that is not safetensors is refused."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > settings.max_upload_bytes:  # refuse before reading a byte
        raise HTTPException(status.HTTP_413_CONTENT_TOO_LARGE,
                            detail=f"upload exceeds {settings.max_upload_bytes} bytes")
    weights_id = uuid.uuid4().hex
    folder = settings.uploads_dir
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f"{weights_id}.upload"
    size = 0
    try:
        with open(tmp, "wb") as fh:
            async for chunk in request.stream():
                size += len(chunk)
                if size > settings.max_upload_bytes:
                    raise HTTPException(status.HTTP_413_CONTENT_TOO_LARGE,
                                        detail=f"upload exceeds {settings.max_upload_bytes} bytes")
                fh.write(chunk)
        if size == 0:
            raise HTTPException(status.HTTP_400_BAD_REQUEST, detail="empty upload")
        try:
            with safe_open(str(tmp), framework="pt") as f:
                count = len(list(f.keys()))
        except (SafetensorError, OSError, ValueError) as exc:
            with open(tmp, "rb") as fh:
                reason = refused_format(fh.read(8)) or str(exc)
            raise HTTPException(status.HTTP_400_BAD_REQUEST, detail=f"not a safetensors file: {reason}") from exc
        tmp.replace(settings.upload_file(weights_id))
    finally:
        tmp.unlink(missing_ok=True)
    return WeightsOut(id=weights_id, reference=f"upload:{weights_id}", size=size, tensors=count)


PICKLE_PROTOCOL = 0x80
ZIP_MAGIC = b"PK\x03\x04"


def refused_format(head: bytes) -> str | None:
    """Name a pickle-based format (torch.save, raw pickle) so a refusal says why; only asked once parsing failed
    (a valid safetensors header length may start with the same bytes)."""
    if head.startswith(ZIP_MAGIC):
        return ("a zip archive (torch.save format), which holds a pickle; nothing is unpickled here: "
                "convert it with safetensors.torch.save_file")
    if head[:1] == bytes([PICKLE_PROTOCOL]):
        return ("a Python pickle; nothing is unpickled here: convert the state dict with "
                "safetensors.torch.save_file")
    return None
