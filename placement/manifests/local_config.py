"""Local-mode mapping of Kubernetes storage to folders: ``msm-local.yaml`` plus ``--pvc`` flags.

``msm-local.yaml`` (optional, in the manifest directory; paths relative to that directory)::

    pvcs:                 # PVC name -> folder (storage.parameters {type: pvc, name} and pvc://)
      my-models-pvc: ./models
    storageKeys:          # storage.key -> folder (ModelMesh storage-config entries)
      localMinIO: ./minio
    runtimeReplicas:      # replicas per runtime in the local mesh (overrides spec.replicas)
      mlserver-1.x: 2
    defaultNamespace: modelmesh-serving   # for manifests without metadata.namespace
    sampleModels: ./models                 # where `msm up` trains the sample models if missing
    sampleSet: digits                      # which: digits (default), complaints, peft-demo
    placement:            # placement engine tunables (EngineConfig fields; read at start)
      scale_up_rpm_per_copy: 2000

``--pvc NAME=PATH`` flags override ``pvcs`` (a relative PATH is relative to the working directory).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from placement.engine.model_types import EngineConfig

LOCAL_CONFIG_NAME = "msm-local.yaml"
DEFAULT_NAMESPACE = "default"
_KEYS = {"pvcs", "storageKeys", "runtimeReplicas", "defaultNamespace", "sampleModels", "sampleSet",
         "placement"}
#: What ``sampleSet`` may name (placement/local/samples.py makes them): the quickstart's digit
#: classifiers, the custom runtime's text classifier, or the LLM example's model.
SAMPLE_SETS = ("digits", "complaints", "peft-demo")


@dataclass(frozen=True)
class LocalConfig:
    """Where PVCs and storage keys live on this machine, and local-mesh knobs."""

    base_dir: Path
    pvcs: Mapping[str, Path] = field(default_factory=dict)
    storage_keys: Mapping[str, Path] = field(default_factory=dict)
    runtime_replicas: Mapping[str, int] = field(default_factory=dict)
    default_namespace: str = DEFAULT_NAMESPACE
    sample_models_dir: Path | None = None
    sample_set: str = "digits"
    placement: Mapping[str, Any] = field(default_factory=dict)  # EngineConfig overrides

    def replicas_for(self, runtime: str, default: int) -> int:
        """Replicas of ``runtime`` in the local mesh: the config's, else ``default``."""
        return self.runtime_replicas.get(runtime, default)

    def pvc_dir(self, name: str) -> Path | None:
        return self.pvcs.get(name)

    def storage_key_dir(self, key: str) -> Path | None:
        return self.storage_keys.get(key)

    def local_path(self, path: str) -> Path:
        """A path from a manifest (file:// URI or plain path), relative to the manifest dir."""
        p = Path(path)
        return p if p.is_absolute() else self.base_dir / p


def parse_pvc_flag(value: str, cwd: Path | None = None) -> tuple[str, Path]:
    """``NAME=PATH`` -> (NAME, absolute PATH); relative paths against ``cwd`` (default: cwd)."""
    name, sep, path = value.partition("=")
    name, path = name.strip(), path.strip()
    if not sep or not name or not path:
        raise ValueError(f"--pvc expects NAME=PATH (e.g. my-models-pvc=./models), got {value!r}")
    p = Path(path).expanduser()
    if not p.is_absolute():
        p = (cwd or Path.cwd()) / p
    return name, p.resolve()


def _folder_map(raw: Any, key: str, where: str, base: Path) -> dict[str, Path]:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ValueError(f"{where}: {key} must be a mapping of name to folder, got {type(raw).__name__}")
    out: dict[str, Path] = {}
    for name, folder in raw.items():
        if not isinstance(folder, str) or not folder:
            raise ValueError(f"{where}: {key}.{name} must be a folder path (string)")
        p = Path(folder).expanduser()
        out[str(name)] = (p if p.is_absolute() else base / p).resolve()
    return out


def _placement(raw: Any, where: str) -> dict[str, Any]:
    """``placement:`` → EngineConfig overrides, each checked against the field's type."""
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ValueError(f"{where}: placement must be a mapping of engine settings")
    defaults = EngineConfig()
    out: dict[str, Any] = {}
    for key, value in raw.items():
        if key not in EngineConfig.__dataclass_fields__:
            known = ", ".join(sorted(EngineConfig.__dataclass_fields__))
            raise ValueError(f"{where}: placement.{key} is not an engine setting; known: {known}")
        default = getattr(defaults, key)
        if isinstance(default, bool):
            ok = isinstance(value, bool)
        elif default is None or isinstance(default, (int, float)):
            ok = isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 0
            if ok and isinstance(default, int) and not isinstance(default, bool):
                ok = isinstance(value, int)
        else:
            ok = False
        if not ok:
            raise ValueError(f"{where}: placement.{key} must be like {default!r}, got {value!r}")
        out[key] = value
    return out


def config_from_mapping(raw: Any, base_dir: Path, where: str = LOCAL_CONFIG_NAME) -> LocalConfig:
    """Build a :class:`LocalConfig` from the parsed ``msm-local.yaml`` content."""
    base_dir = base_dir.resolve()
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ValueError(f"{where}: expected a mapping at the top level")
    unknown = sorted(set(raw) - _KEYS)
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {', '.join(unknown)}; known: {', '.join(sorted(_KEYS))}")
    replicas_raw = raw.get("runtimeReplicas") or {}
    if not isinstance(replicas_raw, dict):
        raise ValueError(f"{where}: runtimeReplicas must be a mapping of runtime name to a count")
    replicas: dict[str, int] = {}
    for name, n in replicas_raw.items():
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise ValueError(f"{where}: runtimeReplicas.{name} must be a non-negative integer, got {n!r}")
        replicas[str(name)] = n
    namespace = raw.get("defaultNamespace", DEFAULT_NAMESPACE)
    if not isinstance(namespace, str) or not namespace:
        raise ValueError(f"{where}: defaultNamespace must be a non-empty string")
    sample = raw.get("sampleModels")
    if sample is not None and not isinstance(sample, str):
        raise ValueError(f"{where}: sampleModels must be a folder path (string)")
    sample_set = raw.get("sampleSet", "digits")
    if sample_set not in SAMPLE_SETS:
        raise ValueError(f"{where}: sampleSet must be one of {', '.join(SAMPLE_SETS)}, got {sample_set!r}")
    return LocalConfig(
        placement=_placement(raw.get("placement"), where),
        base_dir=base_dir,
        pvcs=_folder_map(raw.get("pvcs"), "pvcs", where, base_dir),
        storage_keys=_folder_map(raw.get("storageKeys"), "storageKeys", where, base_dir),
        runtime_replicas=replicas,
        default_namespace=namespace,
        sample_models_dir=(base_dir / sample).resolve() if sample else None,
        sample_set=sample_set,
    )


def load_local_config(directory: str | Path, pvc_flags: Iterable[str] = ()) -> LocalConfig:
    """Read ``DIR/msm-local.yaml`` (if present) and apply ``--pvc NAME=PATH`` overrides.

    Raises ValueError (a message naming the file or flag) on a malformed config.
    """
    base = Path(directory).resolve()
    path = base / LOCAL_CONFIG_NAME
    raw: Any = None
    if path.is_file():
        try:
            raw = yaml.safe_load(path.read_text())
        except yaml.YAMLError as e:
            raise ValueError(f"{path}: not valid YAML: {e}") from e
    config = config_from_mapping(raw, base, str(path))
    overrides = dict(parse_pvc_flag(f) for f in pvc_flags or ())
    if not overrides:
        return config
    return LocalConfig(base_dir=config.base_dir, pvcs={**config.pvcs, **overrides},
                       storage_keys=config.storage_keys, runtime_replicas=config.runtime_replicas,
                       default_namespace=config.default_namespace,
                       sample_models_dir=config.sample_models_dir, placement=config.placement)
