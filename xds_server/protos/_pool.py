"""The private descriptor pool that ``inference_v2_pb2`` registers in.

MLServer (``dataplane.proto``) and tritonclient (``grpc_service.proto``) each register their own
``inference.*`` symbols in protobuf's default pool; a third copy there would make any process that
imports one of them fail with "duplicate symbol". This pool holds msm's copy and its imports.
"""

from __future__ import annotations

from google.api import annotations_pb2, http_pb2
from google.protobuf import descriptor_pb2, descriptor_pool

POOL = descriptor_pool.DescriptorPool()

for _mod in (descriptor_pb2, http_pb2, annotations_pb2):  # dependency order
    _fdp = descriptor_pb2.FileDescriptorProto()
    _mod.DESCRIPTOR.CopyToProto(_fdp)
    POOL.Add(_fdp)
