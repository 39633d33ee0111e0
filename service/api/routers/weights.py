"""/weights: upload base weights (safetensors only) for jobs to reference as `upload:<id>`."""

from __future__ import annotations

import uuid

from fastapi import APIRouter, HTTPException, Request, status
from pydantic import BaseModel
from safetensors import SafetensorError, safe_open

from service.api.deps import SettingsDep, Writer

router = APIRouter(prefix="/weights", tags=["weights"])


class WeightsOut(BaseModel):
    id: str
    reference: str
    size: int
    tensors: int


@router.post("", status_code=status.HTTP_201_CREATED, response_model=WeightsOut,
             openapi_extra={"requestBody": {"content": {"application/octet-stream": {}}, "required": True}})
async def upload(request: Request, settings: SettingsDep, _: Writer) -> WeightsOut:
    """The raw safetensors bytes as the body. Nothing is unpickled: a file that is not safetensors is refused."""
    weights_id = uuid.uuid4().hex
    folder = settings.artifact_dir / "weights"
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f"{weights_id}.upload"
    size = 0
    try:
        with open(tmp, "wb") as fh:
            async for chunk in request.stream():
                size += len(chunk)
                if size > settings.max_upload_bytes:
                    raise HTTPException(status.HTTP_413_REQUEST_ENTITY_TOO_LARGE,
                                        detail=f"upload exceeds {settings.max_upload_bytes} bytes")
                fh.write(chunk)
        if size == 0:
            raise HTTPException(status.HTTP_400_BAD_REQUEST, detail="empty upload")
        try:
            with safe_open(str(tmp), framework="pt") as f:
                count = len(list(f.keys()))
        except (SafetensorError, OSError, ValueError) as exc:
            raise HTTPException(status.HTTP_400_BAD_REQUEST, detail=f"not a safetensors file: {exc}") from exc
        tmp.replace(folder / f"{weights_id}.safetensors")
    finally:
        tmp.unlink(missing_ok=True)
    return WeightsOut(id=weights_id, reference=f"upload:{weights_id}", size=size, tensors=count)
