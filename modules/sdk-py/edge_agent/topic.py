"""Topic helpers, the same as the Rust SDK's."""


def topic_level(topic, n):
    """Level ``n`` (0-based) of ``topic`` split on ``/``, or ``None`` if it has fewer."""
    levels = topic.split("/")
    return levels[n] if 0 <= n < len(levels) else None


def fill_topic(template, topic):
    """Fills the placeholders of a topic template from ``topic``, the event's topic.

    ``{topic}`` is the whole topic, ``{N}`` level N counted from 0, ``{N..}`` levels N to
    the end joined by ``/``. A level that does not exist becomes the empty string;
    anything else in braces is left as it is.
    ``fill_topic("alerts/{1..}", "sensors/kitchen/temperature")`` is
    ``"alerts/kitchen/temperature"``.
    """
    levels = topic.split("/")
    out = []
    rest = template
    while "{" in rest:
        open_at = rest.index("{")
        out.append(rest[:open_at])
        after = rest[open_at + 1 :]
        close = after.find("}")
        if close < 0:
            rest = rest[open_at:]
            break
        inner = after[:close]
        filled = None
        if inner == "topic":
            filled = topic
        elif inner.endswith("..") and _is_index(inner[:-2]):
            filled = "/".join(levels[int(inner[:-2]) :])
        elif _is_index(inner):
            n = int(inner)
            filled = levels[n] if n < len(levels) else ""
        if filled is None:
            out.append("{")
            rest = after
        else:
            out.append(filled)
            rest = after[close + 1 :]
    out.append(rest)
    return "".join(out)


def _is_index(text):
    # Rust's usize parsing: ASCII digits, an optional leading '+'.
    digits = text[1:] if text.startswith("+") else text
    return digits.isascii() and digits.isdigit()
