"""Logging into the agent's log, tagged with the function's name."""

from wit_world.imports.log import Level, log as _log


def trace(message):
    _log(Level.TRACE, str(message))


def debug(message):
    _log(Level.DEBUG, str(message))


def info(message):
    _log(Level.INFO, str(message))


def warn(message):
    _log(Level.WARN, str(message))


def error(message):
    _log(Level.ERROR, str(message))
