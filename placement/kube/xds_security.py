"""What Istio gateways' agents need of msm as their discovery server, done with Kubernetes.

An Istio agent (pilot-agent) connects to its ``discoveryAddress`` over TLS, checks the server's
certificate against a root it is given (``XDS_ROOT_CA``) for the host name it dialled, and sends
its workload's ServiceAccount token (``authorization: Bearer``, audience ``istio-ca``). So:

- **The serving certificate.** msm keeps a CA of its own in the Secret ``msm-xds-ca`` (made by the
  first replica that finds none: a create either wins or sees the other's). Each replica signs
  its own serving certificate for the xDS Service's DNS names with it at start; the key never
  leaves the process. The CA's certificate, nothing secret, goes to the ConfigMap
  ``msm-xds-root-cert`` in each gateway namespace, which the gateway mounts.
- **The client.** A token is checked with the API server's TokenReview (audience ``istio-ca``),
  and only the ServiceAccounts configured as msm's gateways are served.

Why not a certificate from istiod: its CA issues workload identities (SPIFFE URIs), not the DNS
names the agent checks a discovery server by; and the agent's own trust root stays untouched.
"""

from __future__ import annotations

import asyncio
import base64
import datetime
import logging

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from kubernetes import client
from kubernetes.client.rest import ApiException

from placement.kube import config_maps
from placement.manifests.kube_names import (
    FIELD_MANAGER,
    ISTIO_TOKEN_AUDIENCE,
    LABEL_MANAGED_BY,
    MESH_ROOT_CERT_KEY,
    MESH_ROOT_CONFIGMAP,
    XDS_CA_SECRET,
    XDS_ROOT_CERT_KEY,
    XDS_ROOT_CONFIGMAP,
)

log = logging.getLogger("msm.xds_security")

CA_DAYS = 3650
SERVING_DAYS = 365


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def make_ca(now: datetime.datetime, name: str = "msm xDS CA") -> tuple[bytes, bytes]:
    """A new self-signed CA: (certificate PEM, key PEM)."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "msm"),
                         x509.NameAttribute(NameOID.COMMON_NAME, name)])
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=CA_DAYS))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                         content_commitment=False, key_encipherment=False,
                                         data_encipherment=False, key_agreement=False,
                                         encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256()))
    return cert.public_bytes(serialization.Encoding.PEM), _pem_key(key)


def make_serving_cert(ca_cert_pem: bytes, ca_key_pem: bytes, dns_names: list[str],
                      now: datetime.datetime) -> tuple[bytes, bytes]:
    """A server certificate for ``dns_names`` signed by the CA: (chain PEM, key PEM)."""
    ca_cert = x509.load_pem_x509_certificate(ca_cert_pem)
    ca_key = serialization.load_pem_private_key(ca_key_pem, password=None)
    if not isinstance(ca_key, ec.EllipticCurvePrivateKey):
        raise ValueError("the xDS CA key is not an EC key")
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, dns_names[0])]))
            .issuer_name(ca_cert.subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(min(now + datetime.timedelta(days=SERVING_DAYS), ca_cert.not_valid_after_utc))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in dns_names]), critical=False)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                           critical=False)
            .sign(ca_key, hashes.SHA256()))
    return cert.public_bytes(serialization.Encoding.PEM) + ca_cert_pem, _pem_key(key)


class XdsSecurity:
    """The CA Secret, the root ConfigMaps and TokenReview, through one API client."""

    def __init__(self, api: client.ApiClient, namespace: str, gateway_namespaces: list[str]) -> None:
        self.core = client.CoreV1Api(api)
        self.authn = client.AuthenticationV1Api(api)
        self.namespace = namespace
        self.gateway_namespaces = gateway_namespaces

    async def ca(self) -> tuple[bytes, bytes]:
        """The CA (certificate PEM, key PEM) from its Secret, made first if there is none."""
        return await asyncio.to_thread(self._ca)

    def _ca(self) -> tuple[bytes, bytes]:
        for _ in range(3):
            try:
                secret = self.core.read_namespaced_secret(XDS_CA_SECRET, self.namespace)
                data = secret.data or {}
                return base64.b64decode(data["tls.crt"]), base64.b64decode(data["tls.key"])
            except ApiException as e:
                if e.status != 404:
                    raise
            cert, key = make_ca(datetime.datetime.now(datetime.UTC))
            try:
                self.core.create_namespaced_secret(self.namespace, {
                    "metadata": {"name": XDS_CA_SECRET, "labels": {LABEL_MANAGED_BY: FIELD_MANAGER}},
                    "type": "kubernetes.io/tls",
                    "data": {"tls.crt": base64.b64encode(cert).decode(),
                             "tls.key": base64.b64encode(key).decode()}})
                log.info("made the xDS CA (Secret %s/%s)", self.namespace, XDS_CA_SECRET)
                return cert, key
            except ApiException as e:
                if e.status != 409:  # 409: another replica made it first; read theirs
                    raise
        raise RuntimeError(f"cannot read or make the Secret {self.namespace}/{XDS_CA_SECRET}")

    async def publish_root(self, ca_cert: bytes) -> list[str]:
        """Put the CA certificate in each gateway namespace's ConfigMap; returns the failures."""
        return await asyncio.to_thread(self._publish_root, ca_cert)

    def _publish_root(self, ca_cert: bytes) -> list[str]:
        failed = []
        for ns in self.gateway_namespaces:
            try:
                config_maps.put(self.core, ns, XDS_ROOT_CONFIGMAP, {XDS_ROOT_CERT_KEY: ca_cert.decode()})
            except ApiException as e:
                failed.append(f"ConfigMap {ns}/{XDS_ROOT_CONFIGMAP}: {e.status} {e.reason}")
        return failed

    async def mesh_root(self) -> bytes | None:
        """The mesh's root certificate (istiod's ``istio-ca-root-cert`` in msm's namespace), or
        None while istiod has not put it there."""
        return await asyncio.to_thread(self._mesh_root)

    def _mesh_root(self) -> bytes | None:
        pem = config_maps.read_key(self.core, self.namespace, MESH_ROOT_CONFIGMAP, MESH_ROOT_CERT_KEY)
        return pem.encode() if pem else None

    async def review(self, token: str) -> str | None:
        """Whose token this is (``system:serviceaccount:<ns>:<name>``), per the API server's
        TokenReview for the Istio agent's audience; None when it is not valid."""
        try:
            return await asyncio.to_thread(self._review, token)
        except ApiException as e:
            log.warning("TokenReview failed: %s %s", e.status, e.reason)
            return None

    def _review(self, token: str) -> str | None:
        review = self.authn.create_token_review(
            {"spec": {"token": token, "audiences": [ISTIO_TOKEN_AUDIENCE]}})
        st = review.status
        if st is None or not st.authenticated or st.user is None:
            return None
        if st.audiences is not None and ISTIO_TOKEN_AUDIENCE not in st.audiences:
            return None
        return str(st.user.username)


def service_account(identity: str) -> str:
    """``NS/NAME`` → the username a ServiceAccount's token reviews as."""
    ns, sep, name = identity.partition("/")
    if not sep or not ns or not name or "/" in name:
        raise ValueError(f"a gateway ServiceAccount is NAMESPACE/NAME, not {identity!r}")
    return f"system:serviceaccount:{ns}:{name}"
