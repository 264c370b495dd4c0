"""`spin` (a test function): loops forever on the payload ``loop``, otherwise publishes
``done <payload>`` to config ``out_topic``. Shows that the agent's timeout stops Python
code that never returns, and that the function keeps working after."""

import edge_agent
from edge_agent import config, publish


def handle(event):
    if event.payload == b"loop":
        n = 0
        while True:
            n += 1
    publish(config.require("out_topic"), b"done " + event.payload, qos=1)


Handler = edge_agent.handler(handle)
