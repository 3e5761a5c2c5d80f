"""Structured logging to stdout, with every configured secret scrubbed.

Redaction is a last line of defence: code must not log secrets in the first
place, but if one slips into a message or an exception it is masked here.
"""

from __future__ import annotations

import base64
import json
import logging
import re
import sys
import time
from collections.abc import Iterable
from urllib.parse import quote, quote_plus

from sidecar.core.tracing import current as current_trace

REDACTED = "<redacted>"
#: Fields of a LogRecord that are not user-supplied ``extra`` values.
_STANDARD_ATTRS = frozenset(vars(logging.makeLogRecord({})).keys()) | {"message", "asctime"}


def _encodings(secret: str) -> set[str]:
    """``secret`` as it may appear in text: as is, percent-encoded (in a URL or a form,
    either case of hex), and in base64 (standard or URL-safe, with or without padding).
    A base64 of more than the secret (``user:password``) is listed by the config."""
    raw = secret.encode()
    found = {secret, quote(secret, safe=""), quote_plus(secret, safe="")}
    found |= {_lower_hex(v) for v in found}
    for b64 in (base64.b64encode(raw).decode(), base64.urlsafe_b64encode(raw).decode()):
        found |= {b64, b64.rstrip("=")}
    return found


def _lower_hex(text: str) -> str:
    """Percent-escapes with lower-case hex digits, the rest as it is."""
    return re.sub(r"%[0-9A-F]{2}", lambda m: m.group(0).lower(), text)


class SecretScrubber(logging.Filter):
    """Replaces any known secret value in a record, in any of its usual encodings, with
    ``<redacted>``."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        super().__init__()
        self._secrets: list[str] = []
        self.update(secrets)

    def update(self, secrets: Iterable[str]) -> None:
        # Longest first so a secret containing another is masked whole; very
        # short values would mask innocent text and protect nothing.
        self._secrets = sorted({v for s in secrets if len(s) >= 4 for v in _encodings(s)},
                               key=len, reverse=True)

    def scrub(self, text: str) -> str:
        for s in self._secrets:
            if s in text:
                text = text.replace(s, REDACTED)
        return text

    def filter(self, record: logging.LogRecord) -> bool:
        if not self._secrets:
            return True
        record.msg = self.scrub(record.getMessage())
        record.args = None
        if record.exc_info and record.exc_info[1] is not None:
            record.exc_text = self.scrub(logging.Formatter().formatException(record.exc_info))
            record.exc_info = None
        for key, value in list(vars(record).items()):
            if key not in _STANDARD_ATTRS and isinstance(value, str):
                setattr(record, key, self.scrub(value))
        return True


class TraceIdFilter(logging.Filter):
    """Adds ``trace_id`` to every record logged while a request is being handled.

    The gRPC and edge handlers set the request's trace in a context variable;
    whatever logs during the request (pipeline, storage, breaker, transport)
    then carries its id without passing it along.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        trace = current_trace.get()
        if trace is not None and "trace_id" not in record.__dict__:
            record.trace_id = trace.trace_id
        return True


#: A log field longer than this (hostile text: a header, an upstream's answer) is cut.
MAX_FIELD_CHARS = 4096
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def _capped(value: str) -> str:
    if len(value) <= MAX_FIELD_CHARS:
        return value
    return f"{value[:MAX_FIELD_CHARS]}...({len(value) - MAX_FIELD_CHARS} more characters)"


def _one_line(value: str) -> str:
    """``value`` capped, its control characters written as ``\\xNN``: one log line stays
    one line, whatever text a client or an upstream sent."""
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", _capped(value))


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, msg, then any ``extra`` fields.
    Strings are capped at :data:`MAX_FIELD_CHARS` (JSON escapes control characters)."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, object] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": _capped(record.getMessage()),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD_ATTRS and not key.startswith("_"):
                out[key] = _capped(value) if isinstance(value, str) else value
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        elif record.exc_text:
            out["exc"] = record.exc_text
        return json.dumps(out, default=str)


class TextFormatter(logging.Formatter):
    """``level logger: msg key=value ...``, one line per record (the traceback, if any,
    below it); control characters escaped and fields capped, so no text a client sent
    can forge a line."""

    def format(self, record: logging.LogRecord) -> str:
        extras = " ".join(
            f"{k}={_one_line(str(v))}" for k, v in vars(record).items()
            if k not in _STANDARD_ATTRS and not k.startswith("_")
        )
        line = f"{record.levelname.lower():7} {record.name}: {_one_line(record.getMessage())}"
        line = f"{line} {extras}" if extras else line
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        elif record.exc_text:
            line += "\n" + record.exc_text
        return line


def configure_logging(level: str, fmt: str, secrets: Iterable[str] = ()) -> SecretScrubber:
    """Route every logger to stdout in ``fmt``; returns the scrubber to update on reload."""
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    scrubber = SecretScrubber(secrets)
    handler.addFilter(TraceIdFilter())
    handler.addFilter(scrubber)
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    # aiohttp's access log is per request noise at info; the edge logs its own.
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    return scrubber
