"""Core logic: no grpc, aiohttp, sqlite or prometheus imports; time is injected."""
