"""Client libraries tested against a real running sidecar."""
