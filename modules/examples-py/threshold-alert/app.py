"""`threshold-alert` in Python: the same behaviour and outputs as the Rust example.

The payload is JSON with a numeric ``value``, e.g. ``{"value": 31.5}``. Config:
``threshold`` (a JSON number) and ``alert_topic`` (``{topic}``-style placeholders filled
from the incoming topic), and optionally ``alert_qos`` (0, 1 or 2; 1 if not set). When
``value > threshold`` it publishes, with QoS ``alert_qos``,
``{"sensor":"kitchen","value":31.5,"threshold":30}`` for topic
``sensors/kitchen/temperature``; otherwise nothing.
"""

import json
import math

import edge_agent
from edge_agent import Reject, config, fill_topic, publish, topic_level


def handle(event):
    threshold = config.parse("threshold", _number)
    alert_topic = config.require("alert_topic")
    alert = check(event.topic, event.payload, threshold)
    if alert is not None:
        qos = _alert_qos(config.get("alert_qos"))
        publish(fill_topic(alert_topic, event.topic), alert, qos=qos)


Handler = edge_agent.handler(handle)


def _alert_qos(value):
    """The alerts' QoS from the ``alert_qos`` config value: 1 if not set."""
    if value is None:
        return 1
    if value.strip() in ("0", "1", "2"):
        return int(value.strip())
    raise Reject(f"config key `alert_qos` must be 0, 1 or 2, not `{value.strip()}`")


def check(topic, payload, threshold):
    """The alert to publish, as JSON text, or None when the value is not above threshold."""
    try:
        # Decoded here, so that a byte-order mark is not JSON (json.loads on bytes would
        # look for the utf-8-sig codec, which this Python does not have).
        document = _loads(payload.decode("utf-8"))
    except ValueError as e:
        raise Reject(f"payload is not JSON: {e}") from None
    value = document.get("value") if isinstance(document, dict) else None
    if not _is_number(value):
        raise Reject('payload has no numeric "value" field')
    if not _exceeds(value, threshold):
        return None
    sensor = topic_level(topic, 1)
    if sensor is None:
        raise Reject(f"topic `{topic}` has no second level to name the sensor")
    return (
        f'{{"sensor":{json.dumps(sensor, ensure_ascii=False)},'
        f'"value":{_format(value)},"threshold":{_format(threshold)}}}'
    )


def _loads(text):
    # Strict JSON, as the Rust example reads it (serde_json): no NaN or Infinity, no lone
    # surrogate escape, and an integer that does not fit 64 bits becomes a float.
    document = json.loads(
        text,
        parse_constant=_reject_constant,
        parse_int=_integer,
        parse_float=_float,
    )
    _well_formed(document)
    return document


def _well_formed(document):
    """Raises ValueError for a string (or key) with a lone surrogate (``"\\ud800"``)."""
    left = [document]
    while left:
        item = left.pop()
        if isinstance(item, str):
            item.encode("utf-8")  # UnicodeEncodeError, a ValueError, on a lone surrogate
        elif isinstance(item, dict):
            left.extend(item.keys())
            left.extend(item.values())
        elif isinstance(item, list):
            left.extend(item)


def _integer(literal):
    n = int(literal)
    return n if -(2**63) <= n < 2**64 else _float(literal)


def _float(literal):
    x = float(literal)
    if math.isinf(x):
        raise ValueError("number out of range")
    return x


def _exceeds(value, threshold):
    """``value > threshold``: exactly for two integers, as floats otherwise (as in Rust)."""
    if isinstance(value, int) and isinstance(threshold, int):
        return value > threshold
    return float(value) > float(threshold)


def _format(number):
    """A number as the Rust example (serde_json) writes it: integers exactly, floats in
    their shortest round-trip digits, with an exponent (``1e+20``, ``1.5e-7``) only from
    1e16 up and below 1e-5."""
    if isinstance(number, int):
        return str(number)
    mantissa, _, exponent = repr(abs(number)).partition("e")
    whole, _, fraction = mantissa.partition(".")
    digits = (whole + fraction).lstrip("0")
    shift = (int(exponent) if exponent else 0) - len(fraction)
    shift += len(digits) - len(digits.rstrip("0"))
    digits = digits.rstrip("0") or "0"
    point = len(digits) + shift  # where the decimal point goes, from the first digit
    sign = "-" if math.copysign(1.0, number) < 0 else ""
    if len(digits) <= point <= 16:
        body = digits + "0" * (point - len(digits)) + ".0"
    elif 0 < point <= 16:
        body = f"{digits[:point]}.{digits[point:]}"
    elif -5 < point <= 0:
        body = "0." + "0" * -point + digits
    else:
        body = digits[0] + (f".{digits[1:]}" if len(digits) > 1 else "") + f"e{point - 1:+d}"
    return sign + body


def _reject_constant(name):
    raise ValueError(f"{name} is not JSON")


def _number(text):
    value = _loads(text)
    if not _is_number(value):
        raise ValueError("not a number")
    return value


def _is_number(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool)
