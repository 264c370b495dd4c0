// `counter` in JavaScript: the same behaviour and outputs as the Rust example.
//
// Counts the events of each topic in the state store (key `count/<topic>`) and publishes
// `{"count":<n>,"topic":<topic>}` to config `out_topic`. A persistent instance keeps the
// counts it has seen in memory and skips the read; the cache is updated only after
// everything else in the call succeeded, so it never runs ahead of the store.

import { config, fillTopic, handler as exportHandler, publish, state } from "../../sdk-js/edge-agent.js";

// Counts this instance has already read or written. Empty in every on-demand call.
const cache = new Map();

export const handler = exportHandler((event) => {
    const out = fillTopic(config.require("out_topic"), event.topic);
    const key = `count/${event.topic}`;
    const cached = cache.get(key);
    let count;
    if (cached === undefined) {
        count = state.increment(key, 1);
    } else {
        count = cached + 1;
        state.set(key, String(count));
    }
    publish(out, JSON.stringify({ count, topic: event.topic }), { qos: 1 });
    cache.set(key, count);
});
