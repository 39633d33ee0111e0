"""A schedule's weights source, resolved at fire time to one checkpoint, its hash and a frozen copy.

Sources: {"path": file or folder} (a folder: the newest readable *.safetensors by mtime, the one
training wrote last) or {"upload_id": id} (POST /weights). A path must lie inside one of the
operator's `schedule_weights_roots` (checked after resolving symlinks, at create time and again at
fire time): the server never reads a path only because a client named it.

The chosen file is copied, content-addressed, into the uploaded-weights folder and the job refers to
it as `upload:<sha256>`: the job loads exactly the bytes that were hashed, even if training
overwrites the checkpoint while the job is queued.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from safetensors import SafetensorError, safe_open

from service.config import Settings

UPLOAD_ID = re.compile(r"^[0-9a-f]{32}$|^[0-9a-f]{64}$")
CHUNK = 1 << 20


class WeightsSourceError(ValueError):
    """The source cannot be used; `field` is the source key at fault ("path" or "upload_id")."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


class NoCheckpointError(WeightsSourceError):
    """A folder that holds no readable checkpoint yet (training has not written one)."""


@dataclass(frozen=True)
class ResolvedWeights:
    path: Path  # the checkpoint read
    sha256: str
    reference: str  # what the job spec's model.weights says: upload:<sha256>


def check_source(source: dict[str, Any], settings: Settings) -> None:
    """Refuse a source the operator does not allow or that does not exist (create/update time)."""
    if "path" in source:
        allowed_path(str(source["path"]), settings)
    else:
        upload_path(str(source["upload_id"]), settings)


def allowed_path(text: str, settings: Settings) -> Path:
    roots = [Path(r).expanduser().resolve() for r in settings.schedule_weights_roots]
    if not roots:
        raise WeightsSourceError("path", "this server takes no weights paths (the operator has set no "
                                         "PRUNESEARCH_SCHEDULE_WEIGHTS_ROOTS); upload the weights and use upload_id")
    raw = Path(text).expanduser()
    if not raw.is_absolute():
        raise WeightsSourceError("path", f"{text!r}: an absolute path inside the allowed roots")
    path = raw.resolve()
    if not any(path == root or path.is_relative_to(root) for root in roots):
        raise WeightsSourceError("path", f"{text!r} is outside the allowed weights roots")
    if not path.exists():
        raise WeightsSourceError("path", f"{text!r} does not exist")
    return path


def upload_path(upload_id: str, settings: Settings) -> Path:
    if not UPLOAD_ID.match(upload_id):
        raise WeightsSourceError("upload_id", f"{upload_id!r}: the id POST /weights returned (32 hex digits)")
    path = settings.upload_file(upload_id)
    if not path.is_file():
        raise WeightsSourceError("upload_id", f"no uploaded weights {upload_id!r}")
    return path


def readable(path: Path) -> bool:
    """A complete safetensors header (a checkpoint still being written usually is not)."""
    try:
        with safe_open(str(path), framework="pt") as f:
            f.keys()
    except (SafetensorError, OSError, ValueError, RuntimeError):
        return False
    return True


def newest_checkpoint(folder: Path) -> Path:
    candidates = []
    for p in folder.glob("*.safetensors"):
        try:
            if p.is_file():
                candidates.append((p.stat().st_mtime, p.name, p))
        except OSError:
            continue  # deleted while listing
    for _, _, p in sorted(candidates, reverse=True):
        if readable(p):
            return p
    raise NoCheckpointError("path", f"{folder} holds no readable *.safetensors checkpoint yet")


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def resolve(source: dict[str, Any], settings: Settings) -> ResolvedWeights:
    """The checkpoint this firing uses, hashed and frozen under the uploads folder."""
    if "path" in source:
        path = allowed_path(str(source["path"]), settings)
        if path.is_dir():
            path = newest_checkpoint(path)
        elif not readable(path):
            raise WeightsSourceError("path", f"{path} is not a readable safetensors file")
    else:
        path = upload_path(str(source["upload_id"]), settings)
    sha = sha256_of(path)
    frozen = settings.upload_file(sha)
    if not frozen.is_file():
        frozen.parent.mkdir(parents=True, exist_ok=True)
        tmp = frozen.with_name(f"{sha}.{os.getpid()}.tmp")
        shutil.copyfile(path, tmp)
        if sha256_of(tmp) != sha:  # rewritten while copying: refuse rather than run on other bytes
            tmp.unlink(missing_ok=True)
            raise WeightsSourceError("path", f"{path} changed while it was being read; next firing retries")
        tmp.replace(frozen)
    return ResolvedWeights(path=path, sha256=sha, reference=f"upload:{sha}")
