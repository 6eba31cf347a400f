"""Every name msm gives Kubernetes objects of its own: labels, annotations, ports, paths.

The runtime workloads (placement.kube.workloads) write them, the runtime-pod source
(placement.sources.pods) and the dev cluster's pod runner read them: one spelling for all.
"""

from __future__ import annotations

#: The field manager of msm's server-side applies (``kubectl get -o yaml --show-managed-fields``).
FIELD_MANAGER = "msm"
#: A runtime pod's runtime (the ServingRuntime's name); the pods msm places models on carry it.
LABEL_RUNTIME = "serving.msm.io/runtime"
#: ModelMesh's labels on its runtime Deployments and pods, kept so existing selectors still work.
LABEL_MODELMESH_SERVICE = "modelmesh-service"
MODELMESH_SERVICE = "modelmesh-serving"
LABEL_APP_NAME = "app.kubernetes.io/name"
LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
#: On a runtime pod: JSON of what placement needs to know of it (ports, capacity, timeouts).
ANNOTATION_INSTANCE = "serving.msm.io/runtime-instance"
#: Istio's sidecar injector labels the pods it injects with ``security.istio.io/tlsMode: istio``:
#: such a pod takes Istio mTLS (Istio's own gateways decide per endpoint by it, "auto mTLS").
LABEL_ISTIO_TLS_MODE = "security.istio.io/tlsMode"
#: msm's adapter sidecar in a runtime pod, and the port of its mmesh.ModelRuntime SPI.
ADAPTER_CONTAINER = "msm-adapter"
ADAPTER_PORT = 8085
#: Where a runtime pod's containers see the PVCs of their models: ``/pvc_mounts/<pvc name>``.
PVC_MOUNT_ROOT = "/pvc_mounts"
#: The volume MLServer and the adapter share for MLServer's model repository.
MODELS_VOLUME = "models-dir"
MODELS_MOUNT = "/models"
#: The Lease the control-plane replicas elect their leader with.
LEADER_LEASE = "msm-controller-leader"


def runtime_deployment_name(runtime: str) -> str:
    """A runtime's Deployment, named as ModelMesh names it (``modelmesh-serving-mlserver-1.x``)."""
    return f"{MODELMESH_SERVICE}-{runtime}"


def runtime_service_name(runtime: str) -> str:
    """A runtime's Service: the Deployment's name with dots as dashes (a Service name is a DNS label)."""
    return runtime_deployment_name(runtime).replace(".", "-")


#: msm's xDS Service (deploy/): gateways find msm at ``<XDS_SERVICE>.<namespace>.svc``.
XDS_SERVICE = "msm-xds"
#: The TLS port for Istio gateways' agents (Istio's own secure xDS port is 15012 too).
XDS_SECURE_PORT = 15012
#: The ConfigMap (msm's namespace) where the leader keeps the rollouts' state: a new leader
#: carries on from it (placement/kube/rollout_store.py).
ROLLOUTS_CONFIGMAP = "msm-rollouts"
ROLLOUTS_KEY = "rollouts.json"
#: The mutual-TLS port where Istio gateways report what they measured (the access log service):
#: the gateway's workload certificate, signed by the mesh's root, is its credential.
MEASURE_SECURE_PORT = 15013
#: The mesh's root certificate, which istiod puts in every namespace (Istio's name and key).
MESH_ROOT_CONFIGMAP = "istio-ca-root-cert"
MESH_ROOT_CERT_KEY = "root-cert.pem"
#: The Secret holding the CA msm signs its xDS serving certificates with (msm's namespace).
XDS_CA_SECRET = "msm-xds-ca"
#: The ConfigMap with that CA's certificate, in each Istio gateway's namespace; the gateway's
#: agent trusts it for the xDS connection (``XDS_ROOT_CA``, see istio/model-gateway.yaml).
XDS_ROOT_CONFIGMAP = "msm-xds-root-cert"
XDS_ROOT_CERT_KEY = "root-cert.pem"
#: The audience of the token an Istio agent sends its discovery server (the chart's ``istio-ca``).
ISTIO_TOKEN_AUDIENCE = "istio-ca"


def xds_service_names(namespace: str) -> list[str]:
    """The DNS names msm's xDS Service answers to: its serving certificate's SANs."""
    return [f"{XDS_SERVICE}.{namespace}.svc", f"{XDS_SERVICE}.{namespace}.svc.cluster.local"]
