"""Outbound calls to configured integrations: the resilient Call pipeline."""
