#!/bin/sh
# Regenerate inference_v2_pb2.py from inference_v2.proto (run from anywhere; needs the venv).
#
# The generated module registers its file in a private descriptor pool (xds_server.protos._pool)
# instead of protobuf's default pool: MLServer and tritonclient ship their own copies of the
# `inference` package, and two files defining the same symbols cannot share one pool.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
py=${PYTHON:-$root/.venv/bin/python}
site=$("$py" -c 'import google.api, os; print(os.path.dirname(os.path.dirname(google.api.__path__[0])))')
grpc_inc=$("$py" -c 'import grpc_tools, os; print(os.path.join(os.path.dirname(grpc_tools.__file__), "_proto"))')
cd "$here"
"$py" -m grpc_tools.protoc -I. -I"$site" -I"$grpc_inc" --python_out=. --pyi_out=. inference_v2.proto
# register in the private pool
sed -i 's/^from google.protobuf import descriptor_pool as _descriptor_pool$/from xds_server.protos import _pool/; s/_descriptor_pool\.Default()\.AddSerializedFile(/_pool.POOL.AddSerializedFile(/' inference_v2_pb2.py
grep -q '_pool.POOL.AddSerializedFile(' inference_v2_pb2.py
