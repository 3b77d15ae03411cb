"""The one function tool the agent frameworks' tests give their agents."""

from __future__ import annotations

ASK = "What is the forecast for Oslo? Call get_weather."
CALLS: list[tuple[str, int]] = []
"""Every call the agents made, as (city, days): the tests clear it and read it."""


def get_weather(city: str, days: int) -> str:
    """The weather forecast for a city.

    Args:
        city: the city's name.
        days: how many days ahead.
    """
    CALLS.append((city, days))
    return f"cloudy, 4C in {city} for {days} days"
