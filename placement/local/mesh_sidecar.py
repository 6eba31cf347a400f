"""A stand-in for an Istio sidecar in front of a dev-cluster runtime pod (the pod runner starts it).

A real sidecar (pilot-agent + Envoy, traffic captured by iptables) cannot run here: every pod
shares the machine's network namespace, and each agent would take the same fixed ports. This
process does the part of one that the model gateway meets, with Istio's own certificates:

- it gets the pod's workload certificate from the real istiod's CA, as an agent does: a CSR for
  ``spiffe://<trust domain>/ns/<ns>/sa/<service account>`` sent to
  ``istio.v1.auth.IstioCertificateService/CreateCertificate`` over TLS (checked against the mesh
  root, for istiod's Service name), authenticated by the pod's ``istio-ca`` token; again at half
  its lifetime;
- on the pod's address it terminates mutual TLS on the inference ports (PeerAuthentication STRICT
  for them): the client must present a certificate of the mesh root whose SPIFFE identity is one
  of ``--allow`` (the gateway's), else the connection is closed; it offers Istio's ALPN
  (``istio-h2``, ``istio-http/1.1``), then pipes bytes to the app;
- on every other port of the pod (the adapter's SPI, which msm's control plane calls as a process
  outside the mesh) it passes plaintext through (PERMISSIVE, as a port-level exception);
- the app listens on the pod's own loopback address (its "localhost"), as apps do behind a
  sidecar that does not use iptables.

Run: ``python -m placement.local.mesh_sidecar --pod-ip … --local-ip … --mtls-port 8080 …``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import logging
import ssl
import sys
import tempfile
from pathlib import Path

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

log = logging.getLogger("msm.mesh_sidecar")
CA_METHOD = "/istio.v1.auth.IstioCertificateService/CreateCertificate"
ISTIO_ALPN = ["istio-h2", "istio-http/1.1", "istio-http/1.0", "istio", "h2", "http/1.1"]


# -- istiod's CA: two small messages, encoded by hand (field numbers of istio.io/api's ca.proto) --
def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b, n = n & 0x7F, n >> 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def encode_request(csr_pem: str, validity_s: int) -> bytes:
    """IstioCertificateRequest{csr = 1, validity_duration = 3}."""
    csr = csr_pem.encode()
    return b"\x0a" + _varint(len(csr)) + csr + b"\x18" + _varint(validity_s)


def decode_response(data: bytes) -> list[str]:
    """IstioCertificateResponse{repeated string cert_chain = 1}; other fields are skipped."""
    out, i = [], 0
    while i < len(data):
        key, i = _read_varint(data, i)
        field, wire = key >> 3, key & 7
        if wire == 2:
            n, i = _read_varint(data, i)
            if i + n > len(data):
                raise ValueError("truncated message from the CA")
            if field == 1:
                out.append(data[i:i + n].decode())
            i += n
        elif wire == 0:
            _, i = _read_varint(data, i)
        else:
            raise ValueError(f"unexpected wire type {wire} in the CA's answer")
    return out


def _read_varint(data: bytes, i: int) -> tuple[int, int]:
    n = shift = 0
    while True:
        if i >= len(data):
            raise ValueError("truncated message from the CA")
        b = data[i]
        i += 1
        n |= (b & 0x7F) << shift
        shift += 7
        if not b & 0x80:
            return n, i


async def fetch_certificate(ca_addr: str, root_pem: bytes, token: str, spiffe_id: str,
                            validity_s: int = 24 * 3600,
                            server_name: str | None = None) -> tuple[bytes, bytes, datetime.datetime]:
    """A workload certificate from istiod: (chain PEM, key PEM, not after). ``server_name``: the
    name istiod's certificate is checked for, when ``ca_addr`` is not it."""
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (x509.CertificateSigningRequestBuilder().subject_name(x509.Name([]))
           .add_extension(x509.SubjectAlternativeName([x509.UniformResourceIdentifier(spiffe_id)]),
                          critical=False)
           .sign(key, hashes.SHA256()))
    req = encode_request(csr.public_bytes(serialization.Encoding.PEM).decode(), validity_s)
    options = [("grpc.ssl_target_name_override", server_name)] if server_name else []
    creds = grpc.ssl_channel_credentials(root_pem)
    async with grpc.aio.secure_channel(ca_addr, creds, options=options) as ch:
        call = ch.unary_unary(CA_METHOD, request_serializer=lambda b: b, response_deserializer=lambda b: b)
        data = await call(req, metadata=(("authorization", f"Bearer {token}"),), timeout=10)
    chain = decode_response(data)
    if not chain:
        raise ValueError("istiod's CA answered with no certificate")
    leaf = x509.load_pem_x509_certificate(chain[0].encode())
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    pem = "".join(c if c.endswith("\n") else c + "\n" for c in chain).encode()
    return pem, key_pem, leaf.not_valid_after_utc


def peer_identity(writer: asyncio.StreamWriter) -> str | None:
    cert = writer.get_extra_info("peercert") or {}
    uris = [v for k, v in cert.get("subjectAltName", ()) if k == "URI"]
    return uris[0] if uris else None


class Sidecar:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        self.ctx.verify_mode = ssl.CERT_REQUIRED
        self.ctx.set_alpn_protocols(ISTIO_ALPN)
        self.allowed = frozenset(args.allow)
        self.refused = 0
        self._conns: set[asyncio.Task[None]] = set()

    async def refresh(self) -> datetime.datetime:
        a = self.args
        root = await asyncio.to_thread(Path(a.root_cert).read_bytes)
        token = (await asyncio.to_thread(Path(a.token).read_text)).strip()
        chain, key, not_after = await fetch_certificate(a.ca_addr, root, token, a.spiffe_id)
        await asyncio.to_thread(self._load, chain, key, root)
        log.info("workload certificate for %s from istiod, valid until %s", a.spiffe_id, not_after)
        return not_after

    def _load(self, chain: bytes, key: bytes, root: bytes) -> None:
        # load_cert_chain reads files: a private folder, gone right after
        with tempfile.TemporaryDirectory() as d:
            (Path(d) / "chain.pem").write_bytes(chain)
            (Path(d) / "key.pem").write_bytes(key)
            self.ctx.load_cert_chain(Path(d) / "chain.pem", Path(d) / "key.pem")
        self.ctx.load_verify_locations(cadata=root.decode())

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            with contextlib.suppress(Exception):
                writer.close()

    async def _serve(self, port: int, mtls: bool, reader: asyncio.StreamReader,
                     writer: asyncio.StreamWriter) -> None:
        try:
            if mtls:
                who = peer_identity(writer)
                if who not in self.allowed:
                    self.refused += 1
                    log.warning("port %d: refused a client with identity %r (allowed: %s)", port, who,
                                ", ".join(sorted(self.allowed)))
                    writer.close()
                    return
            try:
                up_r, up_w = await asyncio.open_connection(self.args.local_ip, port)
            except OSError:
                writer.close()
                return
            await asyncio.gather(self._pipe(reader, up_w), self._pipe(up_r, writer))
        finally:
            with contextlib.suppress(Exception):
                writer.close()

    def _handler(self, port: int, mtls: bool):
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            task = asyncio.current_task()
            assert task is not None
            self._conns.add(task)
            try:
                await self._serve(port, mtls, reader, writer)
            finally:
                self._conns.discard(task)
        return handle

    async def run(self) -> None:
        a = self.args
        not_after = await self._first_certificate()
        servers = []
        for port in a.mtls_port:
            servers.append(await asyncio.start_server(self._handler(port, True), a.pod_ip, port,
                                                      ssl=self.ctx))
        for port in a.plain_port:
            servers.append(await asyncio.start_server(self._handler(port, False), a.pod_ip, port))
        log.info("mTLS on %s:%s, plaintext on %s, to %s", a.pod_ip, a.mtls_port, a.plain_port, a.local_ip)
        try:
            while True:  # renew at half the lifetime left, as Istio's agent does (roughly)
                left = (not_after - datetime.datetime.now(datetime.UTC)).total_seconds()
                await asyncio.sleep(max(30.0, left / 2))
                try:
                    not_after = await self.refresh()
                except (grpc.aio.AioRpcError, OSError, ValueError) as e:
                    log.warning("renewing the workload certificate failed: %s", e)
        finally:
            for s in servers:
                s.close()
            for t in list(self._conns):
                t.cancel()

    async def _first_certificate(self) -> datetime.datetime:
        delay = 0.5
        while True:
            try:
                return await self.refresh()
            except (grpc.aio.AioRpcError, OSError, ValueError) as e:
                log.warning("no workload certificate yet (%s); retrying", e)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="mesh_sidecar", description=__doc__.split("\n")[0])
    p.add_argument("--pod-ip", required=True)
    p.add_argument("--local-ip", required=True)
    p.add_argument("--mtls-port", type=int, action="append", default=[])
    p.add_argument("--plain-port", type=int, action="append", default=[])
    p.add_argument("--allow", action="append", default=[], help="SPIFFE identity a client may have")
    p.add_argument("--spiffe-id", required=True, help="this pod's identity")
    p.add_argument("--ca-addr", default="istiod.istio-system.svc:15012")
    p.add_argument("--root-cert", required=True)
    p.add_argument("--token", required=True)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(Sidecar(args).run())
    return 0


if __name__ == "__main__":
    sys.exit(main())
