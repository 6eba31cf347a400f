"""Kubernetes mode's writes: InferenceService status (and later Leases and runtime Deployments)."""
