"""The local mesh's processes: runtime replicas on loopback, sample models, free ports."""
