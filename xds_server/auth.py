"""Who may open an ADS stream on a port: each listening port has one authenticator.

- :class:`GatewayToken`: msm's own gateways carry a shared secret in their gRPC metadata
  (``x-msm-gateway-token``, from a bootstrap rendered with it).
- :class:`BearerTokens`: an Istio agent sends its workload's JWT (``authorization: Bearer …``),
  as it does to istiod. A ``verify`` function (Kubernetes' TokenReview, wired in by the control
  plane: this package never talks to Kubernetes) says whose token it is; only ``allowed``
  identities are served. Answers are remembered for a while, so a reconnecting gateway does not
  cost a review each time and a client repeating a bad token does not either.
- :class:`MeshIdentities`: on a port whose TLS requires a client certificate signed by the mesh's
  root (Istio's), the certificate's SPIFFE identity must be one of the allowed workloads'. Istio's
  gateways report what they measured this way: their Envoy holds its workload certificate (SDS
  ``default``) but no token.

An authenticator returns what the client proved (shown in status), or None to refuse it.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable
from typing import Protocol

GATEWAY_TOKEN_HEADER = "x-msm-gateway-token"
Metadata = Iterable[tuple[str, str | bytes]]


class Authenticator(Protocol):
    #: what a refused client is told
    refusal: str

    async def authenticate(self, metadata: Metadata, peer: str = "") -> str | None:
        """``peer``: the identity of the client's certificate (TLS with client certificates), or ""."""
        ...


def _value(v: str | bytes) -> str:
    return v if isinstance(v, str) else bytes(v).decode("latin-1")


class GatewayToken:
    refusal = "this xDS server serves msm's gateways only"

    def __init__(self, token: str) -> None:
        self._token = token.encode()

    async def authenticate(self, metadata: Metadata, peer: str = "") -> str | None:
        for key, value in metadata:
            if key == GATEWAY_TOKEN_HEADER and hmac.compare_digest(_value(value).encode(), self._token):
                return "gateway token"
        return None


class BearerTokens:
    """``authorization: Bearer <JWT>`` checked by ``verify`` (token → identity, or None)."""

    refusal = "this xDS server serves msm's model gateways only: no token of an allowed identity"

    def __init__(self, verify: Callable[[str], Awaitable[str | None]], allowed: Iterable[str], *,
                 ttl_s: float = 60.0, refused_ttl_s: float = 5.0, max_entries: int = 1024,
                 concurrency: int = 4, clock: Callable[[], float] = time.monotonic) -> None:
        self._verify = verify
        self.allowed = frozenset(allowed)
        self._ttl, self._refused_ttl, self._max = ttl_s, refused_ttl_s, max_entries
        self._clock = clock
        self._seen: OrderedDict[bytes, tuple[float, str | None]] = OrderedDict()
        self._reviews = asyncio.Semaphore(concurrency)  # bounds the load a client flood puts on the API

    @staticmethod
    def bearer(metadata: Metadata) -> str | None:
        for key, value in metadata:
            if key == "authorization":
                scheme, _, token = _value(value).partition(" ")
                if scheme.lower() == "bearer" and token.strip() and len(token) <= 16384:
                    return token.strip()
        return None

    async def authenticate(self, metadata: Metadata, peer: str = "") -> str | None:
        token = self.bearer(metadata)
        if token is None:
            return None
        key = hashlib.sha256(token.encode()).digest()
        now = self._clock()
        hit = self._seen.get(key)
        if hit is not None and hit[0] > now:
            identity = hit[1]
        else:
            async with self._reviews:
                identity = await self._verify(token)
            ok = identity is not None and identity in self.allowed
            self._seen[key] = (self._clock() + (self._ttl if ok else self._refused_ttl), identity)
            self._seen.move_to_end(key)
            while len(self._seen) > self._max:
                self._seen.popitem(last=False)
        if identity is None or identity not in self.allowed:
            return None
        return f"token of {identity}"


def spiffe_workload(identity: str) -> str | None:
    """``NAMESPACE/SERVICEACCOUNT`` of an Istio workload's SPIFFE id
    (``spiffe://<trust domain>/ns/<ns>/sa/<sa>``), or None if it is not one."""
    scheme, sep, rest = identity.partition("://")
    if scheme != "spiffe" or not sep:
        return None
    parts = rest.split("/")
    if len(parts) != 5 or parts[1] != "ns" or parts[3] != "sa" or not all(parts):
        return None
    return f"{parts[2]}/{parts[4]}"


class MeshIdentities:
    """The client certificate (checked against the mesh root by TLS) names an allowed workload.

    Any trust domain is taken: the certificate was signed by the root this port trusts, which is
    the mesh's; what is checked here is which workload it is."""

    refusal = "this port serves msm's model gateways only: no certificate of an allowed workload"

    def __init__(self, allowed: Iterable[str]) -> None:
        self.allowed = frozenset(allowed)  # NAMESPACE/SERVICEACCOUNT

    async def authenticate(self, metadata: Metadata, peer: str = "") -> str | None:
        workload = spiffe_workload(peer)
        if workload is None or workload not in self.allowed:
            return None
        return f"certificate of {workload}"
