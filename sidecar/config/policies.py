"""The operator's config, translated into the policies core works with.

Core (``sidecar/core``) never imports this package: it declares the settings it needs
as its own types, and this module is the one place that builds them from the loaded
config, at start-up and on every reload.
"""

from __future__ import annotations

from sidecar.config.model import WebhooksConfig, WebhookSourceConfig
from sidecar.core.webhooks.ingest import WebhookSettings, WebhookSource
from sidecar.core.webhooks.schemes import SchemeConfig


def scheme_config(source: WebhookSourceConfig) -> SchemeConfig:
    """How one source's signatures are verified."""
    return SchemeConfig(
        scheme=source.scheme, secrets=tuple(s.value for s in source.secrets),
        tolerance=source.tolerance, algorithm=source.algorithm,
        signature_header=source.signature_header, encoding=source.encoding,
        prefix=source.prefix, signed_content=source.signed_content,
        timestamp_header=source.timestamp_header, id_header=source.id_header,
        event_id_header=source.event_id_header, event_id_path=source.event_id_path,
        event_type_header=source.event_type_header, event_type_path=source.event_type_path,
    )


def webhook_settings(config: WebhooksConfig) -> WebhookSettings:
    """Every configured webhook source, as ingest sees it."""
    return WebhookSettings(
        sources={name: WebhookSource(name=src.name, topic=src.topic_name,
                                     max_body_bytes=src.max_body_bytes,
                                     scheme=scheme_config(src))
                 for name, src in config.sources.items()},
        retention=config.retention,
    )
