"""The dev cluster's Istio sidecar stand-in: its messages to istiod's CA read as istio.io/api's
ca.proto says (checked against a descriptor built from that proto's field numbers); the real CA
and the mTLS are exercised end to end in tests/istio."""

from __future__ import annotations

import pytest
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

from placement.local.mesh_sidecar import decode_response, encode_request

F = descriptor_pb2.FieldDescriptorProto


def ca_messages():
    """IstioCertificateRequest / Response as istio.io/api security/v1alpha1/ca.proto declares them."""
    fd = descriptor_pb2.FileDescriptorProto(name="ca_test.proto", package="istio.v1.auth", syntax="proto3")
    req = fd.message_type.add(name="IstioCertificateRequest")
    req.field.add(name="csr", number=1, type=F.TYPE_STRING, label=F.LABEL_OPTIONAL)
    req.field.add(name="validity_duration", number=3, type=F.TYPE_INT64, label=F.LABEL_OPTIONAL)
    resp = fd.message_type.add(name="IstioCertificateResponse")
    resp.field.add(name="cert_chain", number=1, type=F.TYPE_STRING, label=F.LABEL_REPEATED)
    pool = descriptor_pool.DescriptorPool()
    pool.Add(fd)
    get = message_factory.GetMessageClass
    return (get(pool.FindMessageTypeByName("istio.v1.auth.IstioCertificateRequest")),
            get(pool.FindMessageTypeByName("istio.v1.auth.IstioCertificateResponse")))


@pytest.mark.parametrize("validity", [0, 1, 86400, 2**40])
def test_the_request_is_what_istiods_ca_parses(validity) -> None:
    Request, _ = ca_messages()
    csr = "-----BEGIN CERTIFICATE REQUEST-----\n" + "A" * 300 + "\n-----END CERTIFICATE REQUEST-----\n"
    msg = Request.FromString(encode_request(csr, validity))
    assert msg.csr == csr and msg.validity_duration == validity


def test_the_response_is_read_as_istiod_writes_it() -> None:
    _, Response = ca_messages()
    chain = ["-----BEGIN CERTIFICATE-----\nleaf\n", "-----BEGIN CERTIFICATE-----\n" + "r" * 200]
    assert decode_response(Response(cert_chain=chain).SerializeToString()) == chain
    assert decode_response(b"") == []
    with pytest.raises(ValueError, match="truncated"):
        decode_response(Response(cert_chain=chain).SerializeToString()[:-50])
