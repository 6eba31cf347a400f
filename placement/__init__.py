"""Placement: from what the manifests ask for to which runtime instance holds which model.

Data flows one way through the subpackages: ``sources`` (where manifests come from) →
``manifests`` (parsed, validated, resolved desired state) → ``engine`` (pure decisions) →
``control`` (carrying them out: runtime calls, health, activator, gateway stats) → the mesh view
that ``xds_server`` publishes. ``local`` runs runtime replicas as local processes; ``adapters``
serve the runtime SPI in front of model servers; ``protos`` is generated code.
"""
