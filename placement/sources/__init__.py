"""Sources of desired state: a watched folder of manifests (local mesh), the Kubernetes API."""

from placement.sources.local_dir import LocalDirSource

__all__ = ["LocalDirSource"]
