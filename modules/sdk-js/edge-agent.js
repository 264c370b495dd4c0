// edge-agent's JavaScript SDK: write a function as a plain JavaScript function.
//
// A function is a WebAssembly component built with `jco componentize --bundle` against the
// WIT world `edge:agent/function` (modules/sdk/wit). This module is the thin layer between
// that world's raw imports and a handler:
//
//     import { handler, config, publish, fillTopic } from "../../sdk-js/edge-agent.js";
//     export const handler = handler((event) => {
//         publish(fillTopic(config.require("out_topic"), event.topic), event.payload);
//     });
//
// `event` is the raw `event` record (`topic`, `payload` as a Uint8Array, `qos`, `retain`,
// `receivedAtMs` as a BigInt, `userProperties`). Returning means the event is done.
// Throwing rejects it, like `Err` from a Rust function: the agent logs the message, counts
// it, dead-letters the event and discards what the call published or wrote to state. An
// `Error`'s message is the reason (`Reject` is one whose name is left out; anything else
// is `Name: message`).
//
// Module-level variables live as long as the instance: one event on demand, until the
// agent stops (or the function traps) when it is persistent.

import * as rawClock from "edge:agent/clock@0.1.0";
import * as rawConfig from "edge:agent/config@0.1.0";
import * as rawLog from "edge:agent/log@0.1.0";
import * as rawMqtt from "edge:agent/mqtt@0.1.0";
import * as rawState from "edge:agent/state@0.1.0";

/** Rejects the event with exactly this message. */
export class Reject extends Error {}

/** The `handler` export for `handle(event)`: `export const handler = handler(handle)`. */
export function handler(handle) {
    return {
        handle(event) {
            try {
                handle(event);
            } catch (e) {
                throw reason(e);
            }
        },
    };
}

function reason(e) {
    if (e instanceof Reject) return e.message;
    if (e instanceof Error) return e.message ? `${e.name}: ${e.message}` : e.name;
    return String(e);
}

// The raw imports throw a value carrying the WIT `err` string as `payload`.
function call(f, ...args) {
    try {
        return f(...args);
    } catch (e) {
        throw new Reject(e && e.payload !== undefined ? String(e.payload) : String(e));
    }
}

const encoder = new TextEncoder();
// A leading byte-order mark is kept (U+FEFF), as Rust's `str::from_utf8` and Python's
// `bytes.decode` keep it: dropped, a payload with one was JSON to a JavaScript function
// and not to the others.
const decoder = new TextDecoder("utf-8", { fatal: true, ignoreBOM: true });

function bytes(value) {
    return typeof value === "string" ? encoder.encode(value) : value;
}

/**
 * Queues an MQTT message, sent once the handler returns (discarded if it throws).
 * `payload` is a Uint8Array or a string (sent as UTF-8). Throws `Reject` for an invalid
 * topic (empty, or containing `+`, `#` or NUL) or QoS (not 0, 1 or 2).
 */
export function publish(topic, payload, { qos = 0, retain = false } = {}) {
    call(rawMqtt.publish, topic, bytes(payload), qos, retain);
}

/** Decodes a payload (or any bytes) as UTF-8; throws `Reject` if it is not valid. */
export function text(payload) {
    try {
        return decoder.decode(payload);
    } catch {
        throw new Reject("payload is not valid UTF-8");
    }
}

/** Level `n` (0-based) of `topic` split on `/`, or `undefined` if it has fewer. */
export function topicLevel(topic, n) {
    return topic.split("/")[n];
}

/**
 * Fills the placeholders of a topic template from `topic`, the event's topic: `{topic}` is
 * the whole topic, `{N}` level N counted from 0, `{N..}` levels N to the end joined by `/`.
 * A level that does not exist becomes the empty string; anything else in braces is kept.
 * `fillTopic("alerts/{1..}", "sensors/kitchen/temperature")` is "alerts/kitchen/temperature".
 */
export function fillTopic(template, topic) {
    const levels = topic.split("/");
    return template.replace(/\{(topic|\+?\d+(\.\.)?)\}/g, (whole, inner, range) => {
        if (inner === "topic") return topic;
        const n = Number(range ? inner.slice(0, -2) : inner);
        if (!Number.isSafeInteger(n)) return whole;
        return range ? levels.slice(n).join("/") : (levels[n] ?? "");
    });
}

/** The function's `[function.config]` table. */
export const config = {
    /** The value of `key` (a string), or `fallback` if it is not set. */
    get(key, fallback = undefined) {
        return rawConfig.get(key) ?? fallback;
    },
    /** Every key and value, as an object. */
    getAll() {
        return Object.fromEntries(rawConfig.getAll());
    },
    /** The value of `key`; throws `Reject` "missing config key `KEY`" if unset. */
    require(key) {
        const value = rawConfig.get(key);
        if (value === undefined) throw new Reject(`missing config key \`${key}\``);
        return value;
    },
    /** `parser(value)` for the value of `key`, or a `Reject` naming the key. */
    parse(key, parser) {
        const value = config.require(key);
        try {
            return parser(value);
        } catch (e) {
            throw new Reject(
                `config key \`${key}\` has an invalid value ${JSON.stringify(value)}: ${e.message ?? e}`,
            );
        }
    },
};

/**
 * The function's own key-value store, kept by the agent on local disk. Writes made during
 * a call apply when the handler returns and are discarded if it throws.
 */
export const state = {
    /** The value under `key` as a Uint8Array, or `undefined`. */
    get: (key) => rawState.get(key),
    /** The value under `key` decoded as UTF-8, or `undefined`. */
    getText(key) {
        const value = rawState.get(key);
        return value === undefined ? undefined : text(value);
    },
    /** Stores `value` (a Uint8Array, or a string stored as UTF-8) under `key`. */
    set: (key, value) => call(rawState.set, key, bytes(value)),
    /** Removes `key`; not an error if it is absent. */
    delete: (key) => call(rawState.delete, key),
    /** Adds `delta` to the integer under `key` (absent is 0); returns the sum as a Number. */
    increment: (key, delta = 1) => Number(call(rawState.increment, key, BigInt(delta))),
    /** Up to `limit` `[key, value]` pairs whose key starts with `prefix`, in key order. */
    list: (prefix = "", limit = 100) => rawState.list(prefix, limit),
};

/** Logging into the agent's log, tagged with the function's name. */
export const log = Object.fromEntries(
    ["trace", "debug", "info", "warn", "error"].map((level) => [
        level,
        (message) => rawLog.log(level, String(message)),
    ]),
);

/** Time, as the agent sees it. */
export const clock = {
    /** Wall-clock time: milliseconds since the Unix epoch (UTC), as a Number. */
    nowMs: () => Number(rawClock.nowMs()),
    /** A monotonic clock for durations, in nanoseconds from an arbitrary start (BigInt). */
    monotonicNs: () => rawClock.monotonicNs(),
};
