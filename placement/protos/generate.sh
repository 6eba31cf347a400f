#!/usr/bin/env bash
# Regenerate the Python code of the runtime SPI protos (needs grpcio-tools: pip install msm[dev]).
#   placement/protos/generate.sh [python]
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
py="${1:-${PYTHON:-$root/.venv/bin/python}}"
cd "$root"
"$py" -m grpc_tools.protoc -I. --python_out=. --pyi_out=. --grpc_python_out=. \
  placement/protos/model_runtime.proto placement/protos/runtime_inventory.proto \
  placement/protos/mlserver_repository.proto
rm -f placement/protos/mlserver_repository_pb2_grpc.py  # messages only, no service
# The stubs only use grpcio API that has been stable for years; let them import with any grpcio
# that pyproject.toml allows instead of the grpcio-tools version that generated them.
for f in placement/protos/*_pb2_grpc.py; do
  sed -i -E "s/^GRPC_GENERATED_VERSION = '[0-9.]+'/GRPC_GENERATED_VERSION = '1.70.0'/" "$f"
done
# Likewise the protobuf gencode check: the floor is the protobuf that pyproject.toml requires.
"$py" - <<'PY'
import pathlib, re
for f in pathlib.Path("placement/protos").glob("*_pb2.py"):
    text = re.sub(r"(Domain\.PUBLIC,\s*)\d+,\s*\d+,\s*\d+,", r"\g<1>6,\n    31,\n    0,", f.read_text())
    f.write_text(text)
PY
echo "generated: $(ls placement/protos/*_pb2*.py* | tr '\n' ' ')"
