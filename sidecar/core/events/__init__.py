"""Events: the per-topic event log, webhook ingest records and durable consumer groups."""
