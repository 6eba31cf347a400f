"""The pod runner's volumes whose content comes from the API: what a kubelet writes into a pod.

``configMap``, ``secret``, ``downwardAPI`` and ``projected`` (ServiceAccount tokens bound to the
pod, plus the same three kinds) become files in the volume's folder, written again each time a
container of the pod starts (a kubelet refreshes them as they change; the containers here read
them at start). A missing ConfigMap or Secret is an empty volume when ``optional``, else an error
the pod shows (``CreateContainerConfigError``) until it exists. Paths of ``items`` stay inside
the volume.

Blocking (API calls, files): the runner calls :meth:`VolumeWriter.write` from a worker thread.
"""

from __future__ import annotations

import base64
import json
import math
import os
from pathlib import Path
from typing import Any

from kubernetes import client
from kubernetes.client.rest import ApiException

API_KINDS = ("configMap", "secret", "downwardAPI", "projected")
#: What a pod's containers see as allocatable without limits (the runner's Node says the same).
NODE_MEMORY = 128 * 1024**3
_UNITS = {"": 1, "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30,
          "Ti": 2**40, "m": 10**-3}


def quantity(value: str | int | float) -> float:
    """A Kubernetes quantity (``500m``, ``2``, ``1Gi``) as a number."""
    s = str(value).strip()
    for suffix in sorted(_UNITS, key=len, reverse=True):
        if suffix and s.endswith(suffix):
            return float(s[: -len(suffix)]) * _UNITS[suffix]
    return float(s)


def resource_field(container: dict[str, Any], ref: dict[str, Any]) -> str:
    """A ``resourceFieldRef``'s value, as a kubelet computes it (rounded up in ``divisor`` units;
    no limit set → what the node has)."""
    resource = str(ref.get("resource") or "")
    kind, _, name = resource.partition(".")
    res = (container.get("resources") or {}).get(kind) or {}
    if name in res:
        amount = quantity(res[name])
    elif name == "cpu":
        amount = float(os.cpu_count() or 1)
    elif name == "memory":
        amount = float(NODE_MEMORY)
    else:
        raise ValueError(f"resourceFieldRef {resource}: not known here")
    divisor = quantity(ref.get("divisor") or 1) or 1
    return str(max(1, math.ceil(amount / divisor - 1e-9)))


def field_value(meta: dict[str, Any], fields: dict[str, str], path: str) -> str:
    """A ``fieldRef`` value; ``metadata.labels`` / ``annotations`` as a kubelet writes them to a file
    (``key="value"`` lines, sorted)."""
    if path in ("metadata.labels", "metadata.annotations"):
        items = meta.get(path.split(".")[1]) or {}
        return "\n".join(f"{k}={json.dumps(str(v))}" for k, v in sorted(items.items()))
    if path.startswith(("metadata.labels['", "metadata.annotations['")) and path.endswith("']"):
        group, _, key = path[len("metadata."):-2].partition("['")
        return str((meta.get(group) or {}).get(key, ""))
    if path in fields:
        return fields[path]
    raise ValueError(f"fieldRef {path}: not known here")


def _inside(root: Path, rel: str) -> Path:
    p = Path(rel)
    if p.is_absolute() or ".." in p.parts or not p.parts:
        raise ValueError(f"volume item path {rel!r} leaves the volume")
    return root / p


class VolumeWriter:
    def __init__(self, api: client.ApiClient) -> None:
        self.core = client.CoreV1Api(api)

    def write(self, vol: dict[str, Any], dest: Path, pod: dict[str, Any], fields: dict[str, str]) -> None:
        """Write volume ``vol`` of ``pod`` (its metadata, spec and ``fields`` for fieldRefs) into
        ``dest``."""
        dest.mkdir(parents=True, exist_ok=True)
        files: dict[str, bytes] = {}
        if "projected" in vol:
            for src in vol["projected"].get("sources") or ():
                files.update(self._source(src, pod, fields))
        else:
            kind = next(k for k in API_KINDS if k in vol)
            files.update(self._source({kind: vol[kind]}, pod, fields))
        for rel, data in files.items():
            path = _inside(dest, rel)
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(path.name + ".msm-tmp")
            tmp.write_bytes(data)
            tmp.replace(path)

    def _source(self, src: dict[str, Any], pod: dict[str, Any], fields: dict[str, str]) -> dict[str, bytes]:
        meta, spec = pod["metadata"], pod["spec"]
        ns = meta["namespace"]
        if "serviceAccountToken" in src:
            t = src["serviceAccountToken"]
            body: dict[str, Any] = {"spec": {
                "audiences": [t["audience"]] if t.get("audience") else [],
                "expirationSeconds": max(600, int(t.get("expirationSeconds") or 3600)),
                "boundObjectRef": {"kind": "Pod", "apiVersion": "v1", "name": meta["name"],
                                   "uid": meta["uid"]}}}
            sa = spec.get("serviceAccountName") or "default"
            token = self.core.create_namespaced_service_account_token(sa, ns, body).status.token
            return {t["path"]: token.encode()}
        if "configMap" in src or "secret" in src:
            is_cm = "configMap" in src
            ref = src["configMap"] if is_cm else src["secret"]
            name = ref.get("name") if is_cm else ref.get("secretName") or ref.get("name")
            try:
                if is_cm:
                    cm = self.core.read_namespaced_config_map(name, ns)
                    data = {k: v.encode() for k, v in (cm.data or {}).items()}
                    data.update({k: base64.b64decode(v) for k, v in (cm.binary_data or {}).items()})
                else:
                    sec = self.core.read_namespaced_secret(name, ns)
                    data = {k: base64.b64decode(v) for k, v in (sec.data or {}).items()}
            except ApiException as e:
                if e.status == 404 and ref.get("optional"):
                    return {}
                what = "ConfigMap" if is_cm else "Secret"
                raise ValueError(f"{what} {ns}/{name}: {e.reason}") from None
            items = ref.get("items")
            if not items:
                return data
            out = {}
            for item in items:
                if item["key"] not in data:
                    if ref.get("optional"):
                        continue
                    raise ValueError(f"{name} has no key {item['key']}")
                out[item["path"]] = data[item["key"]]
            return out
        if "downwardAPI" in src:
            out = {}
            containers = {c["name"]: c for c in spec.get("containers") or ()}
            for item in src["downwardAPI"].get("items") or ():
                if "fieldRef" in item:
                    value = field_value(meta, fields, item["fieldRef"]["fieldPath"])
                else:
                    ref = item["resourceFieldRef"]
                    container = containers.get(ref.get("containerName") or "", {})
                    value = resource_field(container, ref)
                out[item["path"]] = value.encode()
            return out
        if "clusterTrustBundle" in src:
            raise ValueError("clusterTrustBundle volumes are not run here")
        raise ValueError(f"volume source {sorted(src)} is not run here")
