"""The aiohttp edge: inbound webhooks and WebSocket clients."""
