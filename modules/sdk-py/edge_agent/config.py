"""The function's ``[function.config]`` table from the agent's config file."""

from wit_world.imports import config as _config

from .errors import Reject


def get(key, default=None):
    """The value of ``key`` (a string), or ``default`` if it is not set."""
    value = _config.get(key)
    return default if value is None else value


def get_all():
    """Every key and value, as a dict in key order."""
    return dict(_config.get_all())


def require(key):
    """The value of ``key``; raises ``Reject`` "missing config key `KEY`" if unset."""
    value = _config.get(key)
    if value is None:
        raise Reject(f"missing config key `{key}`")
    return value


def parse(key, parser):
    """``parser(value)`` for the value of ``key``, or ``Reject`` naming the key."""
    value = require(key)
    try:
        return parser(value)
    except Exception as e:  # noqa: BLE001 - reported with the key and value
        raise Reject(f"config key `{key}` has an invalid value {value!r}: {e}") from None
