"""`counter` in Python: the same behaviour and outputs as the Rust example.

Counts the events of each topic in the state store (key ``count/<topic>``) and publishes
``{"count":<n>,"topic":<topic>}`` to config ``out_topic``. A persistent instance keeps the
counts it has seen in memory and skips the read; the cache is updated only after
everything else in the call succeeded, so it never runs ahead of the store.
"""

import json

import edge_agent
from edge_agent import config, fill_topic, publish, state

# Counts this instance has already read or written. Empty in every on-demand call.
_cache = {}


def handle(event):
    out = fill_topic(config.require("out_topic"), event.topic)
    key = f"count/{event.topic}"
    cached = _cache.get(key)
    if cached is None:
        count = state.increment(key, 1)
    else:
        count = cached + 1
        state.set(key, str(count))
    body = json.dumps({"count": count, "topic": event.topic}, ensure_ascii=False, separators=(",", ":"))
    publish(out, body, qos=1)
    _cache[key] = count


Handler = edge_agent.handler(handle)
