// `echo` in JavaScript: republishes every event's payload unchanged.
//
// Config: `out_topic`, the topic to publish to, with placeholders (`{topic}`, `{N}`,
// `{N..}`) filled from the incoming topic. The copy keeps the event's QoS and is never
// retained.

import { config, fillTopic, handler as exportHandler, publish } from "../../sdk-js/edge-agent.js";

export const handler = exportHandler((event) => {
    const topic = fillTopic(config.require("out_topic"), event.topic);
    publish(topic, event.payload, { qos: event.qos });
});
