"""KServe manifests → desired state: parsing, validation, runtime selection, storage resolution."""
