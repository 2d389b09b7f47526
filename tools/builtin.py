"""Small server-side tools that ship with the server (configs/qwen.yaml offers them)."""
from __future__ import annotations

from datetime import datetime
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError


def current_time(timezone: str = "UTC") -> str:
    """The current date and time in a time zone (an IANA name such as Europe/Paris)."""
    try:
        zone = ZoneInfo(timezone)
    except (ZoneInfoNotFoundError, ValueError):
        return f"unknown time zone {timezone!r}"
    return datetime.now(zone).strftime(f"%A %d %B %Y, %H:%M ({timezone})")
