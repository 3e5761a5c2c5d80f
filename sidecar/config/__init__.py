"""Configuration: one YAML file plus environment variables, validated at start-up."""

from sidecar.config.dump import dump_redacted
from sidecar.config.load import ENV_OVERRIDES, ConfigError, ConfigProblem, load_config, parse_config
from sidecar.config.model import (
    ApiVersionConfig,
    AuthConfig,
    Config,
    EdgeConfig,
    GrpcListenerConfig,
    HttpListenerConfig,
    IntegrationConfig,
    LoggingConfig,
    RouteConfig,
    Secret,
    ServerConfig,
    StorageConfig,
    TimeoutsConfig,
    TlsConfig,
)

__all__ = [
    "ENV_OVERRIDES",
    "ApiVersionConfig",
    "AuthConfig",
    "Config",
    "ConfigError",
    "ConfigProblem",
    "EdgeConfig",
    "GrpcListenerConfig",
    "HttpListenerConfig",
    "IntegrationConfig",
    "LoggingConfig",
    "RouteConfig",
    "Secret",
    "ServerConfig",
    "StorageConfig",
    "TimeoutsConfig",
    "TlsConfig",
    "dump_redacted",
    "load_config",
    "parse_config",
]
