"""Operator settings (never per job): environment variables `PRUNESEARCH_*`, or a `.env` file."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class RayUnavailableError(RuntimeError):
    """No Ray cluster at the configured address."""


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="PRUNESEARCH_", env_file=".env", extra="ignore")

    ray_address: str | None = Field(None, description='join this Ray cluster ("auto", "host:port", "ray://…"); '
                                                      "unset: start an embedded one")
    lut_cache_dir: Path = Field(Path.home() / ".cache" / "prunesearch" / "lut",
                                description="where per-device latency lookup tables are cached")
    model_factories: dict[str, str] = Field(default_factory=dict,
                                            description='operator-registered models: {"name": "pkg.module:function"}')
    # -- server ------------------------------------------------------------------------------------
    database_url: str = Field("sqlite:///prunesearch.db", description="SQLAlchemy URL: SQLite (default) or PostgreSQL")
    artifact_dir: Path = Field(Path("artifacts"), description="job artifacts and uploaded weights")
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=1, le=65535)
    tokens: dict[str, SecretStr] = Field(default_factory=dict, description='bearer tokens {"name": "secret"}; '
                                                                           "mutating endpoints need one")
    read_tokens: dict[str, SecretStr] = Field(default_factory=dict, description="tokens that may only read")
    open_reads: bool = Field(True, description="reads need no token")
    cors_origins: list[str] = Field(default_factory=list)
    max_concurrent_jobs: int = Field(1, ge=1, le=64, description="jobs run at once; the rest queue in order")
    max_upload_bytes: int = Field(200 * 2**20, ge=1)
    max_spec_bytes: int = Field(256 * 2**10, ge=1024, le=64 * 2**20,
                                description="largest request body POST /jobs accepts (413 above it)")
    max_active_jobs_per_token: int = Field(20, ge=1, le=100_000,
                                           description="queued + running jobs one token may have (429 above it)")
    stale_after_s: float = Field(15.0, gt=0, description="a running job whose worker has not heartbeat for this "
                                                          "long is re-queued at start-up")
    dataset_roots: dict[str, str] = Field(default_factory=dict,
                                          description='operator dataset folders {"fashion-mnist": "/data/fmnist"}')
    # -- schedules ---------------------------------------------------------------------------------
    scheduler: Literal["embedded", "off"] = Field(
        "embedded", description="embedded: this server runs the schedule scheduler; off: it does not (run "
                                "`prunesearch scheduler` once elsewhere). Run exactly one per database.")
    schedule_weights_roots: list[Path] = Field(
        default_factory=list, description="folders a schedule's weights path may point into (training output "
                                          "directories); empty: path weights sources are refused")
    schedule_tick_s: float = Field(5.0, gt=0, le=3600, description="how often the scheduler syncs schedules from "
                                                                   "the database and compares finished runs")
    webhook_hosts: list[str] = Field(default_factory=list, description="hosts a schedule's webhook URL may name; "
                                                                       "empty: any host")

    @property
    def uploads_dir(self) -> Path:
        """Where POST /weights keeps uploads; a spec names one as `upload:<id>`."""
        return self.artifact_dir / "weights"

    def upload_file(self, upload_id: str) -> Path:
        """The one place the upload-path formula lives (uploads, preflight, worker, schedules)."""
        return self.uploads_dir / f"{upload_id}.safetensors"
