"""Server-Sent Events as the client reads them: the WHATWG parsing rules over the lines of a `text/event-stream`.

Small enough to keep here rather than add a dependency to the client's base install (pydantic + httpx).
"""

from __future__ import annotations

from dataclasses import dataclass

import httpx

MEDIA_TYPE = "text/event-stream"


@dataclass(frozen=True)
class Message:
    """One dispatched event: its type (`message` when none was named), its data lines joined, the last event id."""

    event: str
    data: str
    id: str | None


class Decoder:
    """Feed it lines (without their line breaks); it returns a `Message` at each blank line that ends an event."""

    def __init__(self) -> None:
        self.last_event_id: str | None = None
        self._event = ""
        self._data: list[str] = []

    def feed(self, line: str) -> Message | None:
        if not line:
            event, data = self._event, self._data
            self._event, self._data = "", []
            if not data:  # a keep-alive, or a block of only `id:`/`retry:`: nothing to dispatch
                return None
            return Message(event or "message", "\n".join(data), self.last_event_id)
        if line.startswith(":"):  # a comment (our keep-alives)
            return None
        name, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if name == "event":
            self._event = value
        elif name == "data":
            self._data.append(value)
        elif name == "id" and "\0" not in value:
            self.last_event_id = value
        return None  # `retry` and unknown fields: ignored (the client keeps its own backoff)


def is_event_stream(response: httpx.Response) -> bool:
    """The server answered with a stream (an older server, or a proxy, may answer a plain JSON page instead)."""
    return response.headers.get("content-type", "").split(";")[0].strip().lower() == MEDIA_TYPE
