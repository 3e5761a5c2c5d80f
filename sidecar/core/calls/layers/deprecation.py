"""Deprecation: an answer's ``Deprecation`` (RFC 9745) and ``Sunset`` (RFC 8594)
headers are parsed, returned to the caller, counted, and logged once per route."""

from __future__ import annotations

import logging

from sidecar.core.calls.context import CallContext, Handler
from sidecar.core.calls.models import DeprecationInfo, UpstreamResponse
from sidecar.core.calls.observer import CallObserver
from sidecar.core.resilience import parse_deprecation, parse_link_rel, parse_sunset, safe_link

log = logging.getLogger("sidecar.calls")


class DeprecationLayer:
    def __init__(self, observer: CallObserver, integration: str, route: str,
                 logged: set[str]) -> None:
        self._observer = observer
        self._integration = integration
        self._route = route
        #: Routes of the integration whose deprecation was logged already (shared).
        self._logged = logged

    async def __call__(self, ctx: CallContext, next: Handler) -> UpstreamResponse:
        response = await next(ctx)
        ctx.deprecation = self._seen(response)
        return response

    def _seen(self, resp: UpstreamResponse) -> DeprecationInfo | None:
        # One pass for both (the first of each, as header() finds): this runs per call.
        dep_header: str | None = None
        sunset_header: str | None = None
        for name, value in resp.headers:
            lname = name.lower()
            if lname == "deprecation":
                if dep_header is None:
                    dep_header = value
            elif lname == "sunset" and sunset_header is None:
                sunset_header = value
        if dep_header is None and sunset_header is None:
            return None
        deprecated, at = parse_deprecation(dep_header) if dep_header else (False, None)
        sunset = parse_sunset(sunset_header) if sunset_header else None
        link = parse_link_rel(resp.header("Link") or "") or ""
        info = DeprecationInfo(deprecated=deprecated, deprecated_at=at, sunset_at=sunset,
                               link=link)
        self._observer.deprecation_seen(self._integration, self._route, info)
        key = self._route or "*"
        if key not in self._logged:
            self._logged.add(key)
            log.warning("upstream announced deprecation", extra={
                "integration": self._integration, "route": self._route,
                "deprecated_at": at, "sunset_at": sunset, "link": safe_link(link)})
        return info
