"""A ConfigMap key read, and a ConfigMap put (made or brought up to date), for msm's own
ConfigMaps: the xDS root certificate in the gateways' namespaces, the rollouts' state, and the
mesh's root that istiod writes. Blocking calls of the ``kubernetes`` client: run them in a thread.
"""

from __future__ import annotations

from typing import Any

from kubernetes import client
from kubernetes.client.rest import ApiException

from placement.manifests.kube_names import FIELD_MANAGER, LABEL_MANAGED_BY


def read_key(core: client.CoreV1Api, namespace: str, name: str, key: str) -> str | None:
    """``data[key]`` of ConfigMap ``namespace/name``; None when the ConfigMap or the key is missing."""
    try:
        cm = core.read_namespaced_config_map(name, namespace)
    except ApiException as e:
        if e.status == 404:
            return None
        raise
    return (cm.data or {}).get(key)


def put(core: client.CoreV1Api, namespace: str, name: str, data: dict[str, str]) -> None:
    """Make ConfigMap ``namespace/name`` hold ``data`` (labelled as msm's): created if missing,
    replaced if its data differs; a writer racing this one (409) means read and try again."""
    body: dict[str, Any] = {"metadata": {"name": name, "labels": {LABEL_MANAGED_BY: FIELD_MANAGER}},
                            "data": data}
    for attempt in range(3):
        try:
            try:
                current = core.read_namespaced_config_map(name, namespace)
            except ApiException as e:
                if e.status != 404:
                    raise
                core.create_namespaced_config_map(namespace, body)
                return
            if (current.data or {}) != data:
                core.replace_namespaced_config_map(name, namespace, {
                    **body, "metadata": {**body["metadata"],
                                         "resourceVersion": current.metadata.resource_version}})
            return
        except ApiException as e:
            if e.status != 409 or attempt == 2:
                raise
