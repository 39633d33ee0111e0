"""Operator settings (not per job): from environment variables `PRUNESEARCH_*` or a `.env` file."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
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
