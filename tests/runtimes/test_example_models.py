"""The examples' models, made at set-up: the custom runtime's classifier and the LLM with its adapter."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from placement.local.samples import (
    COMPLAINTS,
    COMPLAINTS_PIPELINE,
    ensure_complaints_model,
    ensure_sample_set,
)
from placement.local.samples_llm import BASE, PEFT_DEMO, SPECIAL_TOKENS, ensure_peft_model

REPO = Path(__file__).resolve().parents[2]


# The example's module imports MLServer, whose generated protos clash with msm's own in one
# process: it runs in a Python of its own, as in MLServer.
CLEAN_AND_PREDICT = """
import json, sys, joblib
from complaint_classifier import clean
lines = json.loads(sys.argv[2])
cleaned = [clean(t) for t in lines]
print(json.dumps([cleaned, joblib.load(sys.argv[1]).predict(cleaned).tolist()]))
"""


def test_the_complaints_pipeline_with_the_examples_cleaning(tmp_path: Path) -> None:
    [path] = ensure_complaints_model(tmp_path)
    assert path == tmp_path / COMPLAINTS / COMPLAINTS_PIPELINE
    lines = ["Still waiting for my REFUND!! @shop https://x.io/a #fail", "Thank you, great work by the team"]
    out = subprocess.run([sys.executable, "-c", CLEAN_AND_PREDICT, str(path), json.dumps(lines)],
                         cwd=REPO / "examples" / "custom-runtime", capture_output=True, text=True, timeout=60,
                         env={**os.environ, "PYTHONPATH": "."})
    assert out.returncode == 0, out.stderr
    cleaned, labels = json.loads(out.stdout)
    assert cleaned == ["still waiting for my refund", "thank you great work by the team"]
    assert labels == ["complaint", "no complaint"]
    assert ensure_complaints_model(tmp_path) == []  # kept, not trained again


def test_an_unknown_sample_set_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown sample set 'gpt'"):
        ensure_sample_set(tmp_path, "gpt")


def test_the_llm_is_built_offline_deterministic_and_loads_through_from_pretrained(
        tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    [a] = ensure_peft_model(tmp_path / "a")
    [b] = ensure_peft_model(tmp_path / "b")
    assert a.name == PEFT_DEMO and ensure_peft_model(tmp_path / "a") == []
    for rel in ("adapter_model.safetensors", f"{BASE}/model.safetensors", f"{BASE}/tokenizer.json"):
        assert (a / rel).read_bytes() == (b / rel).read_bytes(), rel
    assert json.loads((a / "adapter_config.json").read_text())["base_model_name_or_path"] == BASE
    assert json.loads((a / "adapter_config.json").read_text())["peft_type"] == "PROMPT_TUNING"
    assert not list(tmp_path.glob("a/.peft-demo.*"))  # no half-built leftovers

    from peft import PeftConfig, PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(a / BASE, local_files_only=True)
    assert tokenizer.convert_ids_to_tokens([0, 1, 2, 3]) == list(SPECIAL_TOKENS)  # Bloom's order
    text = "Every day is a new beginning"
    assert tokenizer.decode(tokenizer(text)["input_ids"]) == text
    config = PeftConfig.from_pretrained(str(a))
    base = AutoModelForCausalLM.from_pretrained(a / config.base_model_name_or_path)
    model = PeftModel.from_pretrained(base, str(a))
    assert type(model.base_model).__name__ == "BloomForCausalLM"


def _example(tmp_path: Path, name: str, model: str) -> Path:
    """A copy of an example folder whose model is there (set-up would make it; an empty folder
    is enough for the manifests to resolve)."""
    d = tmp_path / name
    shutil.copytree(REPO / "examples" / name, d, ignore=shutil.ignore_patterns("models", ".msm"))
    (d / "models" / model).mkdir(parents=True)
    return d


def test_the_examples_manifests_resolve_with_the_articles_numbers(tmp_path: Path) -> None:
    from msm.up import load_desired

    config, desired = load_desired(_example(tmp_path, "llm", "peft-demo"), [])
    assert config.sample_set == "peft-demo" and not desired.errors
    [rt] = desired.runtimes.values()
    assert rt.name == "peft-model-server"
    assert (rt.memory_request_bytes, rt.memory_limit_bytes) == (4 << 30, 5 << 30)
    assert (rt.load_timeout_ms, rt.mem_buffer_bytes, rt.measure_model_size) == (90_000, 134217728, True)
    assert rt.env["MLSERVER_MODEL_IMPLEMENTATION"] == "peft_model_server.PeftModelServer"
    [model] = desired.models.values()
    assert model.name == "peft-demo" and model.runtime == "peft-model-server"
    config, desired = load_desired(_example(tmp_path, "custom-runtime", "complaints"), [])
    assert config.sample_set == "complaints" and not desired.errors
    [model] = desired.models.values()
    assert model.name == "complaints" and model.runtime == "complaints-runtime"
