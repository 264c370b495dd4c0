"""Time, as the agent sees it."""

from wit_world.imports import clock as _clock


def now_ms():
    """Wall-clock time: milliseconds since the Unix epoch (UTC)."""
    return _clock.now_ms()


def monotonic_ns():
    """A monotonic clock for durations, in nanoseconds from an arbitrary start."""
    return _clock.monotonic_ns()
