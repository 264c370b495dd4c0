"""The exception that rejects an event with exactly its message."""


class Reject(Exception):
    """Rejects the event: the agent dead-letters it with ``str(self)`` as the reason."""
