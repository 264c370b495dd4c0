// `threshold-alert` in JavaScript: the same behaviour and outputs as the Rust example.
//
// The payload is JSON with a numeric `value`, e.g. `{"value": 31.5}`. Config: `threshold`
// (a JSON number), `alert_topic` (placeholders filled from the incoming topic) and,
// optionally, `alert_qos` (0, 1 or 2; 1 if not set). When `value > threshold` it publishes,
// with QoS `alert_qos`, `{"sensor":"kitchen","value":31.5,"threshold":30}` for topic
// `sensors/kitchen/temperature`; otherwise nothing. Numbers are
// written as the Rust example writes them (integers exactly, floats in shortest form).

import { Reject, config, fillTopic, handler as exportHandler, publish, text, topicLevel } from "../../sdk-js/edge-agent.js";

export const handler = exportHandler((event) => {
    const threshold = config.parse("threshold", parseNumber);
    const alertTopic = config.require("alert_topic");
    const alert = check(event.topic, event.payload, threshold);
    if (alert !== undefined) {
        const qos = alertQos(config.get("alert_qos"));
        publish(fillTopic(alertTopic, event.topic), alert, { qos });
    }
});

/** The alerts' QoS from the `alert_qos` config value: 1 if not set. */
function alertQos(value) {
    if (value === undefined) return 1;
    const trimmed = value.trim();
    if (["0", "1", "2"].includes(trimmed)) return Number(trimmed);
    throw new Reject(`config key \`alert_qos\` must be 0, 1 or 2, not \`${trimmed}\``);
}

/** The alert to publish, as JSON text, or undefined when the value is not above threshold. */
function check(topic, payload, threshold) {
    let doc;
    try {
        doc = parseJson(text(payload));
    } catch (e) {
        throw new Reject(`payload is not JSON: ${e.message}`);
    }
    const value = doc !== null && typeof doc === "object" && !Array.isArray(doc) ? doc.value : undefined;
    if (!(value instanceof JsonNumber)) {
        throw new Reject('payload has no numeric "value" field');
    }
    if (!value.exceeds(threshold)) return undefined;
    const sensor = topicLevel(topic, 1);
    if (sensor === undefined) {
        throw new Reject(`topic \`${topic}\` has no second level to name the sensor`);
    }
    return `{"sensor":${JSON.stringify(sensor)},"value":${value},"threshold":${threshold}}`;
}

/**
 * A JSON number as serde_json reads it: an integer that fits 64 bits stays exact (a
 * BigInt), anything else is a double.
 */
class JsonNumber {
    constructor(source) {
        const integer = /^-?\d+$/.test(source) ? BigInt(source) : undefined;
        const fits = integer !== undefined && integer >= -(2n ** 63n) && integer < 2n ** 64n;
        this.value = fits ? integer : Number(source);
        // serde_json refuses a number no double holds (`1e400`); written as `Infinity` it
        // would not be JSON.
        if (!fits && !Number.isFinite(this.value)) throw new SyntaxError("number out of range");
    }

    exceeds(other) {
        if (typeof this.value === "bigint" && typeof other.value === "bigint") {
            return this.value > other.value;
        }
        return Number(this.value) > Number(other.value);
    }

    toString() {
        return typeof this.value === "bigint" ? String(this.value) : formatDouble(this.value);
    }
}

/**
 * JSON.parse as strict as serde_json, with every number kept as a JsonNumber from its
 * source text: no number out of a double's range, no lone surrogate escape (`"\ud800"`).
 */
function parseJson(source) {
    return JSON.parse(source, (key, value, context) => {
        if (!key.isWellFormed() || (typeof value === "string" && !value.isWellFormed())) {
            throw new SyntaxError("lone surrogate in a string escape");
        }
        return typeof value === "number" ? new JsonNumber(context.source) : value;
    });
}

function parseNumber(source) {
    const value = parseJson(source);
    if (!(value instanceof JsonNumber)) throw new Error("not a number");
    return value;
}

/**
 * A finite double as the Rust example (serde_json) writes it: its shortest round-trip
 * digits, with an exponent (`1e+20`, `1.5e-7`) only from 1e16 up and below 1e-5.
 */
function formatDouble(x) {
    const [mantissa, exp] = Math.abs(x).toExponential().split("e");
    const digits = mantissa.replace(".", "");
    const length = digits.length;
    const point = Number(exp) + 1; // where the decimal point goes, counted from the first digit
    const sign = x < 0 || Object.is(x, -0) ? "-" : "";
    let body;
    if (length <= point && point <= 16) {
        body = `${digits}${"0".repeat(point - length)}.0`;
    } else if (0 < point && point <= 16) {
        body = `${digits.slice(0, point)}.${digits.slice(point)}`;
    } else if (-5 < point && point <= 0) {
        body = `0.${"0".repeat(-point)}${digits}`;
    } else {
        const rest = length > 1 ? `.${digits.slice(1)}` : "";
        const exp = point - 1;
        body = `${digits[0]}${rest}e${exp >= 0 ? "+" : ""}${exp}`;
    }
    return sign + body;
}
