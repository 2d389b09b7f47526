"""Server-side tools for the tests (referenced by "tests.tool_fixtures:<name>" in configs)."""
from __future__ import annotations

import asyncio
import threading
import time

CALLS: list[tuple[str, dict]] = []  # every call made, in order
STARTED = threading.Event()


def get_weather(city: str, unit: str = "celsius") -> dict:
    """Today's weather in a city.

    The rest of the docstring is not part of the description."""
    CALLS.append(("get_weather", {"city": city, "unit": unit}))
    return {"city": city, "temperature": 21, "unit": unit}


def slow_side_effect(seconds: float = 0.6) -> str:
    """Something that takes a while and must not be undone (a booking)."""
    STARTED.set()
    time.sleep(seconds)
    CALLS.append(("slow_side_effect", {"seconds": seconds}))
    return "booked"


async def never_returns() -> str:
    """Hangs: the timeout must end it."""
    await asyncio.sleep(3600)
    return "never"


def broken(x: int = 1) -> str:
    """Always fails."""
    raise RuntimeError("the backend is down")
