"""Shared helpers of the manifest tests: fixture files and small manifests."""

from __future__ import annotations

import shutil
import textwrap
from pathlib import Path

import yaml

FIXTURES = Path(__file__).parent / "fixtures"


def copy_fixtures(dest: Path, *names: str) -> Path:
    for n in names:
        shutil.copy(FIXTURES / n, dest / n)
    return dest


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    return path


def isvc(name: str, fmt: str = "sklearn", path: str = "mnist-svm.joblib", *, runtime: str | None = None,
         namespace: str = "modelmesh-serving", version: str | None = None,
         predictor: dict | None = None) -> str:
    """An InferenceService like the article's (PVC storage), as YAML text."""
    model: dict = {"modelFormat": {"name": fmt, **({"version": version} if version else {})},
                   "storage": {"parameters": {"type": "pvc", "name": "my-models-pvc"}, "path": path}}
    if runtime:
        model["runtime"] = runtime
    doc = {"apiVersion": "serving.kserve.io/v1beta1", "kind": "InferenceService",
           "metadata": {"name": name, "namespace": namespace,
                        "annotations": {"serving.kserve.io/deploymentMode": "ModelMesh"}},
           "spec": {"predictor": {**(predictor or {}), "model": model}}}
    return yaml.safe_dump(doc, sort_keys=False)


def runtime(name: str, formats: str = "- {name: sklearn, autoSelect: true}", *, kind: str = "ServingRuntime",
            namespace: str | None = "modelmesh-serving", extra: str = "") -> str:
    """A small multi-model ServingRuntime as YAML text (``formats`` is the YAML list)."""
    ns = f"\n  namespace: {namespace}" if namespace and kind == "ServingRuntime" else ""
    fmts = "\n".join("    " + line for line in formats.splitlines())
    return (f"apiVersion: serving.kserve.io/v1alpha1\nkind: {kind}\nmetadata:\n  name: {name}{ns}\n"
            f"spec:\n  supportedModelFormats:\n{fmts}\n  multiModel: true\n"
            f"  grpcDataEndpoint: port:8001\n  grpcEndpoint: port:8085\n{extra}"
            f"  containers:\n    - name: mlserver\n      image: seldonio/mlserver:1.7.1\n"
            f"  builtInAdapter:\n    serverType: mlserver\n")


def local_dir(tmp: Path, *, model_bytes: int = 1000, files: tuple[str, ...] = ("mnist-svm.joblib",)) -> Path:
    """A manifest folder with msm-local.yaml mapping my-models-pvc to ./models and model files."""
    write(tmp / "msm-local.yaml", "pvcs:\n  my-models-pvc: ./models\nstorageKeys:\n  localMinIO: ./minio\n")
    for f in files:
        p = tmp / "models" / f
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"\0" * model_bytes)
    return tmp
