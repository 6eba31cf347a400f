# msm's image: the Kubernetes-mode control plane (`msm kube-control-plane`, deploy/) and the
# adapter sidecar it puts into runtime pods, one image for both.
#   docker build -t msm:0.1.0 .
FROM python:3.12-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /src
# README.md: pyproject.toml names it as the package's readme, and the build reads it.
COPY pyproject.toml README.md ./
COPY msm/ msm/
COPY placement/ placement/
COPY xds_server/ xds_server/
# envoy/ goes into the wheel as xds_server/_envoy (pyproject.toml's force-include); the KServe
# CRDs travel inside placement/ (placement/manifests/crds/).
COPY envoy/ envoy/
RUN pip install --no-cache-dir . \
    && cd / && rm -rf /src

# The uid deploy/base/deployment.yaml runs as (runAsNonRoot needs a numeric user).
RUN useradd --uid 1000 --user-group --no-create-home --home-dir /tmp msm
USER 1000
WORKDIR /tmp

ENTRYPOINT ["msm"]
