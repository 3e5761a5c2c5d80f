"""The upstream HTTP adapter: moves bytes to integrations; policy lives in the core."""
