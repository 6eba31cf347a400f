"""What ``maxLoadingConcurrency`` buys: a burst of cold models on one runtime replica.

For each concurrency (the ServingRuntime annotation ModelMesh reads, ``maxLoadingConcurrency``),
``msm up`` runs a temporary folder: one MLServer replica with room for every model and
``--models`` InferenceServices on copies of a sample model (``--model``). Once it is ready, one
warm-up model is loaded (MLServer imports the model's library on its first load), then the first
request of every model is sent at the same moment (all cold) and each one's latency is recorded,
then the mesh stops. Side by side in one run, so the machine's state is the same for all settings.

    .venv/bin/python bench/cold_loads.py                       # concurrency 1, 2, 4; 8 models; 3 rounds
    .venv/bin/python bench/cold_loads.py --concurrency 1 2 --models 12 --rounds 5

A round is one mesh start per concurrency (the order alternates between rounds). Loopback only,
free ports; about 20 s per mesh start on 2 cores. docs/placement.md has the latest numbers.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests" / "mesh"))

import httpx  # noqa: E402
from mesh_harness import DIGIT_8, LocalMeshProcess, isvc_yaml, local_config, runtime_yaml  # noqa: E402

from placement.local.samples import MNIST_FOREST, MNIST_SVM, ensure_sample_models  # noqa: E402


def with_concurrency(runtime: str, concurrency: int) -> str:
    """The runtime manifest with ModelMesh's ``maxLoadingConcurrency`` annotation."""
    return runtime.replace("  namespace: modelmesh-serving\n",
                           f"  namespace: modelmesh-serving\n  annotations:\n"
                           f"    maxLoadingConcurrency: \"{concurrency}\"\n", 1)


def one_burst(root: Path, samples: Path, models: int, concurrency: int, model_file: str) -> list[float]:
    """Start a mesh with ``concurrency``, send every model's first request at once, stop it."""
    folder = root / f"c{concurrency}-{time.monotonic_ns()}"
    pvc, manifests = folder / "pvc", folder / "manifests"
    pvc.mkdir(parents=True)
    manifests.mkdir()
    names = [f"m{i:02d}" for i in range(models)]
    for name in [*names, "warm-up"]:
        shutil.copyfile(samples / model_file, pvc / f"{name}.joblib")
        (manifests / f"{name}.yaml").write_text(isvc_yaml(name, f"{name}.joblib"))
    (manifests / "runtime.yaml").write_text(with_concurrency(runtime_yaml(memory="2Gi"), concurrency))
    (manifests / "msm-local.yaml").write_text(local_config(pvc, 1))
    mesh = LocalMeshProcess(manifests, folder / "state").start()
    try:
        with httpx.Client(timeout=120) as client:
            def first(name: str) -> float:
                t = time.monotonic()
                r = client.post(f"{mesh.rest}/v2/models/{name}/infer", content=DIGIT_8)
                if r.status_code != 200 or '"8"' not in r.text:
                    raise RuntimeError(f"{name}: {r.status_code} {r.text[:200]}")
                return time.monotonic() - t

            # MLServer's first load in a process imports the model's library (about 1 s for
            # scikit-learn): pay that before the burst, which then measures the loads themselves
            first("warm-up")
            with ThreadPoolExecutor(max_workers=models) as pool:
                return list(pool.map(first, names))
    finally:
        mesh.stop()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 2, 4])
    p.add_argument("--models", type=int, default=8)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--model", choices=["svm", "forest"], default="svm",
                   help="the sample model each InferenceService loads: the 0.5 MB SVM or the 2.9 MB forest")
    args = p.parse_args()
    root = Path(tempfile.mkdtemp(prefix="msm-cold-loads-"))
    try:
        samples = root / "samples"
        ensure_sample_models(samples, with_xgboost=False)
        results: dict[int, list[list[float]]] = {c: [] for c in args.concurrency}
        model_file = MNIST_FOREST if args.model == "forest" else MNIST_SVM
        for r in range(args.rounds):
            order = args.concurrency if r % 2 == 0 else list(reversed(args.concurrency))
            for c in order:
                lat = one_burst(root, samples, args.models, c, model_file)
                results[c].append(lat)
                print(f"round {r + 1}, maxLoadingConcurrency {c}: slowest {max(lat) * 1000:.0f} ms, "
                      f"median {statistics.median(lat) * 1000:.0f} ms", flush=True)
        print(f"\n{args.models} cold models ({args.model}) at once on one MLServer replica, {args.rounds} "
              "rounds (medians over rounds)\n")
        print("| maxLoadingConcurrency | median first request ms | slowest first request ms |")
        print("| ---: | ---: | ---: |")
        for c in args.concurrency:
            med = statistics.median(statistics.median(x) for x in results[c]) * 1000
            worst = statistics.median(max(x) for x in results[c]) * 1000
            print(f"| {c} | {med:.0f} | {worst:.0f} |")
        return 0
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
