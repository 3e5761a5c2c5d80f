"""Reading the provider's event id and type from headers or a JSON path into the body."""

from __future__ import annotations

import json
from dataclasses import dataclass

from sidecar.core.webhooks.verdict import WebhookRequest

_UNPARSED = object()


@dataclass(frozen=True)
class FieldSource:
    """Where one field is read: the headers in order, then the JSON paths; first non-empty wins."""

    headers: tuple[str, ...] = ()
    #: Dotted paths into the JSON body, e.g. ``event.type``; digits index lists.
    paths: tuple[str, ...] = ()

    def overridden(self, header: str, path: str) -> FieldSource:
        """The configured override when there is one, else this default."""
        if not header and not path:
            return self
        return FieldSource(headers=(header,) if header else (), paths=(path,) if path else ())


class JsonBody:
    """The raw body as JSON, parsed at most once and only if a path is asked for."""

    def __init__(self, raw: bytes) -> None:
        self._raw = raw
        self._parsed: object = _UNPARSED

    def get(self, path: str) -> object:
        """The value at dotted ``path``, or ``None`` if absent or the body is not JSON."""
        node = self.document
        for segment in path.split("."):
            if isinstance(node, dict):
                node = node.get(segment)
            elif isinstance(node, list) and segment.isascii() and segment.isdigit():
                index = int(segment)
                node = node[index] if index < len(node) else None
            else:
                return None
        return node

    @property
    def document(self) -> object:
        if self._parsed is _UNPARSED:
            try:
                self._parsed = json.loads(self._raw)
            except (ValueError, RecursionError):
                # Not JSON (Slack slash commands are form-encoded, for one), or nested
                # deeper than the parser recurses: there is simply nothing to read.
                self._parsed = None
        return self._parsed


def read_field(source: FieldSource, request: WebhookRequest, body: JsonBody) -> str:
    """The field's text from the first place in ``source`` that has one, else ``""``."""
    for name in source.headers:
        value = (request.header(name) or "").strip()
        if value:
            return value
    for path in source.paths:
        text = scalar_text(body.get(path))
        if text:
            return text
    return ""


def scalar_text(value: object) -> str:
    """A JSON string as is and an integer in decimal; anything else is ``""``."""
    if isinstance(value, str):
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return ""
