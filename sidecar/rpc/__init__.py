"""The gRPC adapter: proto <-> domain conversion, error mapping, interceptors, server."""
