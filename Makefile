# Two entry points that work on a fresh machine:
#   make up    set up .venv, then run the local mesh from examples/quickstart
#   make test  set up .venv, then run lint and the whole test suite
PY ?= python3
VENV ?= .venv

.PHONY: setup up dev-cluster dev-cluster-istio test lint tools bench faults mutate clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml scripts/setup.sh
	PY=$(PY) VENV=$(VENV) bash scripts/setup.sh
	touch $@

up: setup
	$(VENV)/bin/msm up examples/quickstart

# The article on Kubernetes, on this machine (docs/kubernetes.md): real etcd, kube-apiserver,
# controller-manager and scheduler, deploy/ applied, msm, the gateway on 8008, a pod runner.
dev-cluster: setup
	bash scripts/build-tools.sh
	$(VENV)/bin/python -m placement.local.samples examples/quickstart/models
	$(VENV)/bin/msm dev-cluster up --pvc my-models-pvc=examples/quickstart/models

# The same with Istio: istioctl install, istiod, and Istio's gateway configured by msm (docs/istio.md).
dev-cluster-istio: setup
	bash scripts/build-tools.sh
	$(VENV)/bin/python -m placement.local.samples examples/quickstart/models
	$(VENV)/bin/msm dev-cluster up --istio --pvc my-models-pvc=examples/quickstart/models

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/lint-imports --no-cache

# Real etcd, kube-apiserver, controller-manager, scheduler and kubectl (scripts/tools/), and
# Istio's istioctl, pilot-discovery and pilot-agent (scripts/tools-istio/), built once from their
# Go modules at pinned versions into ~/.cache/msm-tools; prints where they are.
tools:
	bash scripts/build-tools.sh

# Without Go (exit 3) the Kubernetes tests skip and say why; CI (.ci/run) turns that into a failure.
test: lint
	bash scripts/build-tools.sh || [ $$? -eq 3 ]
	$(VENV)/bin/python -m pytest -q -ra

# The benchmarks at their documented sizes take long (see docs/benchmarks.md for each command);
# this runs the quick ones.
bench: setup
	$(VENV)/bin/python bench/placement_zipf.py
	$(VENV)/bin/python bench/xds_scale.py --models 1000 10000 --instances 100

# Faults under load on a local mesh (docs/faults.md): steady traffic over 20 models while runtimes,
# the control plane and Envoy are killed and manifests edited; loopback only, a few minutes.
faults: setup
	$(VENV)/bin/python bench/faults.py

# Mutation testing of the engine, the xDS state machine, translation, the activator and manifest
# resolution (docs/testing.md: well over an hour on 2 cores; not part of `make test`).
mutate: setup
	rm -rf mutants
	$(VENV)/bin/mutmut run --max-children 2
	$(VENV)/bin/python scripts/mutation_score.py

clean:
	rm -rf $(VENV) .pytest_cache mutants
