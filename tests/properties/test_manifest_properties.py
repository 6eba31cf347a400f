"""Property-based tests over manifest folders (hypothesis; settings in tests/properties/conftest.py).

A. Any folder a user could write is read: ``load_manifest_dir`` never raises, every KServe
   document yields a model or runtime or a message naming its file and document, every message is
   bounded (< 5000 characters a line, no line that names no file), nothing resolved leaves its
   storage root, and no example takes more than 2 s. Three ways in: whole random folders (YAML
   edge cases included), folders of documents with one hostile field each, and the whole
   catalogue of (field, hostile value) cases once.
B. A valid folder goes through the real placement engine and translation into a configuration
   that Envoy itself accepts (``envoy --mode validate``), for both cluster layouts and gateway
   options within their ranges.
C. Memory quantities of Kubernetes' grammar are read with Kubernetes' value, or refused.

Inputs of known product bugs are left out unless ``MSM_PROPERTIES_KNOWN_BUGS=all`` (or ``=2,7``,
see ``_property_strategies.tame``); ``MSM_HYPOTHESIS_PROFILE=explore`` draws fresh random examples.
"""

from __future__ import annotations

import random
import re
import subprocess
import tempfile
import time
from fractions import Fraction
from pathlib import Path

import pytest
from _property_strategies import (
    DIRECTORY,
    NOT_UTF8,
    OVERSIZE,
    SYMLINK_OUT,
    Folder,
    ValidFolder,
    any_folder,
    catalogue,
    gateway_options,
    memory_quantities,
    targeted_folder,
    valid_folder,
    write_storage,
)
from envoy_check import validate_command, write_static
from hypothesis import event, given, note, settings
from hypothesis import strategies as st

from placement.engine.clock import FakeClock
from placement.engine.engine import Engine
from placement.engine.model_types import EngineConfig, InstanceInfo, LoadAction, UnloadAction
from placement.manifests.desired_state import DesiredState
from placement.manifests.kserve import Document, load_manifest_dir, parse_documents
from placement.manifests.validation import API_VERSIONS, crd_validator, parse_quantity, resource_problem
from xds_server.bootstrap import static_bootstrap
from xds_server.mesh_view import ActivatorEndpoint, MeshView, Model, Revision, check_model
from xds_server.translate import GatewayOptions, UpstreamTls, translate

#: A message longer than this is not "a clear message" (the docs: values quoted are cut).
MAX_MESSAGE = 5000
ISVC_NAME = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
RUNTIME_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")


@pytest.fixture(scope="module", autouse=True)
def _crd_validators_loaded() -> None:
    """Build the CRD validators once, before the clock of the first example starts."""
    for kind, api in API_VERSIONS.items():
        crd_validator(kind, api)


# ---------------------------------------------------------------------------------------------
# A. Any folder: read or refused with a clear message, never a crash
# ---------------------------------------------------------------------------------------------


def listed(d: Path) -> list[str]:
    """The files msm reads in a manifest folder (docs/manifests.md, "Accepted")."""
    return sorted(p.name for p in d.iterdir() if p.suffix in (".yaml", ".yml") and p.name != "msm-local.yaml"
                  and not p.name.startswith(".") and p.is_file())


def check_messages(state: DesiredState, files: list[str]) -> list[str]:
    """Every message: a non-empty string, each line bounded and starting with the file it is about."""
    lines = []
    for key, value in state.errors.items():
        assert isinstance(key, str) and key, key
        assert isinstance(value, str) and value.strip(), (key, value)
        for line in value.split("\n"):
            assert len(line) < MAX_MESSAGE, f"a message of {len(line)} characters: {line[:400]}…"
            assert any(line.startswith(f) for f in files), f"a message that names no file: {line[:400]!r}"
            lines.append(line)
    return lines


def read_documents(d: Path, files: list[str]) -> dict[str, tuple[list[Document], list[str]]]:
    """Each listed file's documents as msm parses them (None: not read as YAML at all)."""
    out: dict[str, tuple[list[Document], list[str]]] = {}
    for name in files:
        try:
            text = (d / name).read_text(encoding="utf-8")
        except UnicodeDecodeError:
            out[name] = ([], ["not UTF-8"])
            continue
        if (d / name).is_symlink() or len(text.encode()) > 2 * 1024 * 1024:
            out[name] = ([], ["not read"])
            continue
        out[name] = parse_documents(text, name)
    return out


def check_documents(state: DesiredState, parsed: dict[str, tuple[list[Document], list[str]]],
                    lines: list[str]) -> None:
    """Every KServe document yields a model or runtime, or a message naming its file and number."""
    sources = {m.source for m in state.models.values()} | {r.source for r in state.runtimes.values()}
    for name, (docs, errors) in parsed.items():
        about_file = [line for line in lines if line.startswith(name)]
        if errors:
            assert about_file, f"{name} was not read ({errors[0][:200]}) and no message says so"
        for doc in docs:
            if not doc.is_kserve:
                continue
            tag = f"{name} doc {doc.index}"
            if tag in sources:
                continue
            spec = doc.body.get("spec") if isinstance(doc.body, dict) else None
            if not doc.problems and isinstance(spec, dict) and spec.get("disabled") is True:
                continue  # a disabled runtime is valid and runs nowhere (docs/manifests.md)
            assert any(f"{tag} " in line or f"{tag}:" in line for line in about_file), (
                f"{tag} ({doc.kind}/{doc.name}) yielded nothing and no message names it")


#: The folders of the local configs of _property_strategies (PVC name / storage key -> folder).
PVC_FOLDERS = {"my-models-pvc": "models", "other-pvc": "minio"}
KEY_FOLDERS = {"localMinIO": "minio", "default": "models"}


def storage_root(body: dict, d: Path) -> Path:
    """The storage root a resolved model must stay in, from its own document (docs/manifests.md)."""
    pred = body["spec"]["predictor"]
    model = pred.get("model") if isinstance(pred.get("model"), dict) else next(
        v for v in pred.values() if isinstance(v, dict))
    storage, uri = model.get("storage"), model.get("storageUri")
    if isinstance(storage, dict):
        params = storage.get("parameters") or {}
        if params.get("type") == "pvc":
            return (d / PVC_FOLDERS[params["name"]]).resolve()
        return (d / KEY_FOLDERS[storage.get("key") or "default"]).resolve()
    if uri.startswith("pvc://"):
        return (d / PVC_FOLDERS[uri[len("pvc://"):].split("/")[0]]).resolve()
    return d.resolve()  # file:// or a plain path: the manifest folder


def check_resolved(state: DesiredState, d: Path, parsed: dict[str, tuple[list[Document], list[str]]]) -> None:
    """What resolved is well formed, and no model reads outside its storage root."""
    bodies = {f"{name} doc {doc.index}": doc.body for name, (docs, _) in parsed.items() for doc in docs}
    for name, m in state.models.items():
        assert name == m.name and ISVC_NAME.match(name) and len(name) <= 63, name
        assert m.revision_id.startswith(f"{name}__isvc-"), m.revision_id
        assert len(m.revision_id) == len(name) + 17, m.revision_id
        assert m.canary_percent is None or 0 <= m.canary_percent <= 100
        assert 0 <= m.min_copies <= 1000 and m.size_estimate_bytes >= 1 and m.load_timeout_s > 0
        assert m.runtime in state.runtimes, (m.runtime, list(state.runtimes))
        assert check_model(Model(m.name, (Revision(m.revision_id, m.runtime),))) == []
        p, root = Path(m.storage_path), storage_root(bodies[m.source], d)
        assert p.exists() and p.resolve() == p and (p == root or root in p.parents), (m.storage_path, root)
    for name, rt in state.runtimes.items():
        assert name == rt.name and RUNTIME_NAME.match(name) and len(name) <= 253, name
        assert not rt.disabled and rt.replicas >= 0 and rt.load_timeout_ms >= 1
        assert rt.capacity_bytes is None or 0 <= rt.capacity_bytes < 2**63


def check_folder(folder: Folder) -> None:
    with tempfile.TemporaryDirectory(prefix="msm-prop-") as tmp:
        d = folder.write(Path(tmp))
        state = load_manifest_dir(d)  # the property: it never raises
        files = listed(d)
        lines = check_messages(state, files)
        parsed = read_documents(d, files)
        check_documents(state, parsed, lines)
        check_resolved(state, d, parsed)
        for name, content in folder.files.items():
            if name in files and content in (NOT_UTF8, SYMLINK_OUT, OVERSIZE):
                assert any(line.startswith(name) for line in lines), name
            if content == DIRECTORY:
                assert name not in files


@pytest.mark.timeout(240)
@settings(max_examples=200, deadline=2000)
@given(folder=any_folder())
def test_any_folder_is_read_or_refused_with_a_clear_message(folder: Folder) -> None:
    check_folder(folder)


@pytest.mark.timeout(240)
@settings(max_examples=100, deadline=2000)
@given(folder=targeted_folder())
def test_every_field_msm_reads_survives_its_hostile_values(folder: Folder) -> None:
    check_folder(folder)


@pytest.mark.timeout(240)
def test_every_hostile_value_of_the_catalogue_is_read_or_refused() -> None:
    """The catalogue behind ``targeted_folder``, every (field, value) case once (no sampling luck)."""
    failures = []
    for folder, singles in catalogue():
        started = time.monotonic()
        try:
            check_folder(folder)
            assert time.monotonic() - started < 30, "a batch of 25 documents took more than 30 s"
        except Exception:
            for label, single in singles:
                try:
                    check_folder(single)
                except Exception as e:
                    failures.append(f"{label}: {type(e).__name__}: {str(e)[:300]}")
    assert not failures, f"{len(failures)} cases broke the property:\n" + "\n".join(failures)


@settings(max_examples=300, deadline=1000)
@given(quantity=memory_quantities())
def test_memory_limits_are_read_as_kubernetes_reads_them(quantity: tuple[str, Fraction]) -> None:
    """A container's limits.memory: any quantity of Kubernetes' grammar gets Kubernetes' value, or a
    message when it is no whole, positive number of bytes up to 2^63 - 1."""
    text, value = quantity
    problem = resource_problem("memory", text)
    if value > 0 and value.denominator == 1 and value <= 2**63 - 1:
        assert problem is None, f"{text!r} ({value} bytes) refused: {problem}"
        assert int(parse_quantity(text)) == value, (text, parse_quantity(text), value)
    else:
        assert problem and text in problem and len(problem) < 500, (text, value, problem)


# ---------------------------------------------------------------------------------------------
# B. Valid folders: engine → mesh view → translation → Envoy accepts it
# ---------------------------------------------------------------------------------------------

ADDRESSES = st.sampled_from(["127.0.0.1", "10.0.0.7", "192.168.1.20", "::1", "fd00::17"])
def envoy_reason(out: str) -> str:
    """Why Envoy refused a configuration: its critical lines, each cut before the proto it dumps."""
    lines = [line[:2000] for line in out.splitlines()
             if "[critical]" in line or "validation failed" in line or line.startswith(": ")]
    return "\n".join(lines) if lines else out[-3000:]


def load_valid(d: Path, folder: ValidFolder, version: int) -> DesiredState:
    folder.write(d, version)
    state = load_manifest_dir(d)
    assert state.errors == {}, state.errors
    assert set(state.models) == {m.name for m in folder.models}
    assert set(state.runtimes) == {r.name for r in folder.runtimes}
    return state


def play_loads(engine: Engine, data: st.DataObject, rounds: int = 3) -> None:
    """Tick and answer the engine's actions as runtimes would: most loads succeed, some fail or hang."""
    pending: list[LoadAction] = []
    for _ in range(rounds):
        actions = engine.tick()
        for a in actions:
            if isinstance(a, UnloadAction):
                engine.unload_done(a.instance, a.revision)
            elif isinstance(a, LoadAction):
                pending.append(a)
        keep = []
        for a in pending:
            outcome = data.draw(st.sampled_from(["ok", "ok", "ok", "fail", "later"]),
                                label=f"load {a.revision}")
            if outcome == "ok":
                engine.load_succeeded(a.instance, a.revision, a.model.size_estimate_bytes)
            elif outcome == "fail":
                engine.load_failed(a.instance, a.revision, "boom")
            else:
                keep.append(a)
        pending = keep


def mesh_view_of(folder: ValidFolder, d: Path, data: st.DataObject) -> MeshView:
    """The view the controller would publish after the engine placed ``folder``'s models."""
    clock = FakeClock()
    engine = Engine(clock, EngineConfig(), random.Random(0))
    state = load_valid(d, folder, 1)
    n = 0
    for rt in state.runtimes.values():
        for _ in range(data.draw(st.integers(1, 3), label=f"instances of {rt.name}")):
            port = data.draw(st.integers(1, 65534), label="instance port")
            capacity = rt.capacity_bytes if rt.capacity_bytes is not None else 2**30
            engine.instance_up(InstanceInfo(f"i{n}", rt.name, data.draw(ADDRESSES, label="address"), port,
                                            port + 1, capacity, data.draw(st.integers(1, 2))))
            n += 1
    for version in (1, 2) if folder.rolls else (1,):
        if version == 2:
            clock.advance(data.draw(st.sampled_from([1.0, 30.0])))
            state = load_valid(d, folder, 2)
        engine.set_desired(state.desired_models())
        for name in state.models:
            if data.draw(st.booleans(), label=f"request {name}"):
                engine.request_for_cold_model(name)
        play_loads(engine, data)
    clock.advance(data.draw(st.sampled_from([0.0, 5.0, 60.0]), label="time passes"))
    play_loads(engine, data, rounds=1)
    return engine.mesh_view(ActivatorEndpoint("127.0.0.1", 7000, 7001))


@pytest.mark.e2e
@pytest.mark.timeout(240)
@settings(max_examples=30, deadline=None)
@given(folder=valid_folder(), options=gateway_options(UpstreamTls), data=st.data())
def test_valid_folders_translate_into_config_envoy_accepts(folder: ValidFolder, options: dict,
                                                           data: st.DataObject) -> None:
    with tempfile.TemporaryDirectory(prefix="msm-prop-") as tmp:
        d = write_storage(Path(tmp))
        view = mesh_view_of(folder, d, data)
        for model in view.models.values():
            assert check_model(model) == [], (model, check_model(model))
        note(f"view: {view}")
        models = view.models.values()
        event(f"models with a ready copy: {sum(any(r.copies for r in m.revisions) for m in models)}"
              f"/{len(view.models)}")
        event(f"weighted split: {any(m.rules for m in models)}")
        event(f"a model with 2 revisions: {any(len(m.revisions) > 1 for m in models)}")
        runs = []
        for layout in ("subset", "per_revision"):
            opts = GatewayOptions(cluster_layout=layout, **options)
            boot = static_bootstrap(translate(view, opts), admin_port=0)
            path = write_static(Path(tmp) / f"{layout}.json", boot, opts.upstream_tls is not None)
            runs.append((layout, path, subprocess.Popen(
                validate_command(path), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)))
        for layout, path, proc in runs:
            out, _ = proc.communicate(timeout=120)
            assert proc.returncode == 0, (
                f"Envoy refused the {layout} configuration ({path}):\n{envoy_reason(out)}")
