"""How one webhook source is verified: its scheme, secrets, tolerance and field overrides."""

from __future__ import annotations

from dataclasses import dataclass

#: Five minutes each way, the window Stripe, Slack and Standard Webhooks recommend:
#: wide enough for clock skew and queueing at the provider, narrow enough that a
#: captured request cannot be replayed for long.
DEFAULT_TOLERANCE = 300.0


@dataclass(frozen=True)
class SchemeConfig:
    """Verification settings of one source.

    ``secrets`` are all active secrets as configured; a signature made with any
    of them is accepted, which is how rotation works. The generic-HMAC fields are
    ignored by the other schemes. The ``event_*`` overrides apply to every scheme
    and replace its default: a header name, or a dotted JSON path into the body
    (``data.id``; numeric segments index lists). When both are set the header
    wins and the path is the fallback.
    """

    scheme: str
    secrets: tuple[str, ...]
    #: Seconds; timestamped schemes reject signed timestamps further than this
    #: from ``now`` in either direction.
    tolerance: float = DEFAULT_TOLERANCE
    # generic_hmac only:
    algorithm: str = "sha256"
    signature_header: str = ""
    encoding: str = "hex"
    prefix: str = ""
    signed_content: str = "{body}"
    timestamp_header: str = ""
    id_header: str = ""
    # Event id / type overrides, all schemes:
    event_id_header: str = ""
    event_id_path: str = ""
    event_type_header: str = ""
    event_type_path: str = ""
