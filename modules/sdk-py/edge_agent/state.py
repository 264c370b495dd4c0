"""The function's own key-value store, kept by the agent on local disk.

Writes made during a call apply when the handler returns and are discarded if it raises.
Limit errors (key or value size, key count) raise ``Reject``.
"""

from componentize_py_types import Err
from wit_world.imports import state as _state

from .errors import Reject


def get(key):
    """The value under ``key`` as bytes, or ``None``."""
    return _state.get(key)


def get_str(key):
    """The value under ``key`` decoded as UTF-8, or ``None``."""
    value = _state.get(key)
    return None if value is None else value.decode()


def set(key, value):  # noqa: A001 - the WIT name
    """Stores ``value`` (bytes, or str stored as UTF-8) under ``key``."""
    if isinstance(value, str):
        value = value.encode()
    _call(_state.set, key, bytes(value))


def delete(key):
    """Removes ``key``; not an error if it is absent."""
    _call(_state.delete, key)


def increment(key, delta=1):
    """Adds ``delta`` to the integer stored under ``key`` (absent is 0); returns the sum."""
    return _call(_state.increment, key, delta)


def list(prefix="", limit=100):  # noqa: A001 - the WIT name
    """Up to ``limit`` ``(key, value)`` pairs whose key starts with ``prefix``, in order."""
    return _state.list(prefix, limit)


def _call(f, *args):
    try:
        return f(*args)
    except Err as e:
        raise Reject(e.value) from None
