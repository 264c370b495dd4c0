"""`echo` in Python: republishes every event's payload unchanged.

Config: ``out_topic``, the topic to publish to, with placeholders (``{topic}``, ``{N}``,
``{N..}``) filled from the incoming topic. The copy keeps the event's QoS and is never
retained.
"""

import edge_agent
from edge_agent import config, fill_topic, publish


def handle(event):
    topic = fill_topic(config.require("out_topic"), event.topic)
    publish(topic, event.payload, qos=event.qos)


Handler = edge_agent.handler(handle)
