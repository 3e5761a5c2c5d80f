"""Queued calls: durable asynchronous outbound delivery (EnqueueCall). A call is
stored, then attempted through the same Call stacks as ``Call`` on a long-horizon
schedule, until it succeeds, fails for good, or its schedule runs out."""
