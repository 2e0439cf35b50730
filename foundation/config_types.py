"""The base model and value types shared by every config (the gateway's, the district's, the stores')."""

from __future__ import annotations

from typing import Annotated
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import AfterValidator, BaseModel, ConfigDict, Field


def _known_zone(value: str) -> str:
    try:
        ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"unknown time zone {value!r}; use an IANA name such as Asia/Shanghai") from None
    return value


ZoneName = Annotated[str, AfterValidator(_known_zone)]
"""An IANA time zone name that this machine knows."""


Port = Annotated[int, Field(ge=1, le=65535)]


class ConfigModel(BaseModel):
    """A config section: frozen once loaded, and an unknown key is an error (a typo never goes unnoticed)."""

    model_config = ConfigDict(frozen=True, extra="forbid")
