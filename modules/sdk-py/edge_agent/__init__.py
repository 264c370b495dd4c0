"""edge-agent's Python SDK: write a function as a plain Python function.

A function is a WebAssembly component built with componentize-py against the WIT world
``edge:agent/function`` (``modules/sdk/wit``). This package is the thin layer between
that world's raw bindings and a handler::

    import edge_agent
    from edge_agent import config, publish, fill_topic

    def handle(event):
        publish(fill_topic(config.require("out_topic"), event.topic), event.payload)

    Handler = edge_agent.handler(handle)   # what componentize-py exports

``event`` is the raw ``Event`` record (``topic``, ``payload`` as bytes, ``qos``,
``retain``, ``received_at_ms``, ``user_properties``). Returning means the event is done.
Raising any ``Exception`` rejects it, like ``Err`` from a Rust function: the agent logs
the message, counts it, dead-letters the event and discards what the call published or
wrote to state. ``Reject("why")`` gives exactly ``why`` as the message, and is what this
SDK raises itself; any other exception gives ``Type: message``. Anything that escapes as a trap (a ``BaseException``
such as ``SystemExit``, running out of memory or time) ends the instance.

Module-level variables live as long as the instance: one event when the function runs on
demand, until the agent stops (or the function traps) when it is persistent.
"""

from componentize_py_types import Err

from wit_world.imports import mqtt as _mqtt
from wit_world.imports.types import Event

from . import clock, config, log, state
from .errors import Reject
from .topic import fill_topic, topic_level

__all__ = [
    "Event",
    "Reject",
    "clock",
    "config",
    "fill_topic",
    "handler",
    "log",
    "publish",
    "state",
    "topic_level",
]


def handler(handle):
    """The class componentize-py exports for ``handle(event)``: bind it to ``Handler``."""

    class Handler:
        def handle(self, event):
            try:
                handle(event)
            except Err:
                raise
            except Reject as e:
                raise Err(str(e)) from None
            except Exception as e:  # noqa: BLE001 - every failure becomes the event's error
                message = str(e)
                raise Err(f"{type(e).__name__}: {message}" if message else type(e).__name__)

    Handler.__name__ = Handler.__qualname__ = "Handler"
    Handler.__doc__ = handle.__doc__
    return Handler


def publish(topic, payload, qos=0, retain=False):
    """Queues an MQTT message, sent once the handler returns (discarded if it raises).

    ``payload`` is ``bytes`` or ``str`` (sent as UTF-8). Raises ``Reject`` for an
    invalid topic (empty, or containing ``+``, ``#`` or NUL) or QoS (not 0, 1 or 2).
    """
    if isinstance(payload, str):
        payload = payload.encode()
    try:
        _mqtt.publish(topic, bytes(payload), qos, retain)
    except Err as e:
        raise Reject(e.value) from None
