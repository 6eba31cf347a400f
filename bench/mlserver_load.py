"""What a load costs in MLServer itself, beside ``joblib.load`` of the same file (issue 15).

Makes the Ray benchmark's random forests (``bench/ray_multiplex.py``), then, in one idle MLServer
(parallel_workers 0), loads each through the repository API with only its own
``model-settings.json`` visible, as msm's adapter does; prints the medians. Loopback only; the
MLServer process is stopped at the end.

    .venv/bin/python bench/mlserver_load.py [--compress] [--models 40]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ray_multiplex import make_models

from placement.local.ports import free_port


def _post(url: str) -> None:
    urllib.request.urlopen(urllib.request.Request(url, method="POST", data=b""), timeout=60).read()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", type=int, default=40)
    p.add_argument("--compress", action="store_true", help="zlib-compressed files (the 'costlier' loads)")
    args = p.parse_args()
    import joblib

    with tempfile.TemporaryDirectory(prefix="msm-mlload-") as tmp:
        root = Path(tmp)
        files = sorted(make_models(root / "files", args.models, args.compress))
        direct = []
        for name in files:
            t = time.perf_counter()
            joblib.load(root / "files" / f"{name}.joblib")
            direct.append((time.perf_counter() - t) * 1000)
        repo = root / "repo"
        repo.mkdir()
        http, grpc_port, metrics = free_port(), free_port(), free_port()
        (repo / "settings.json").write_text(json.dumps({
            "host": "127.0.0.1", "http_port": http, "grpc_port": grpc_port, "metrics_port": metrics,
            "parallel_workers": 0, "load_models_at_startup": False}))
        proc = subprocess.Popen([str(Path(sys.executable).parent / "mlserver"), "start", str(repo)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        base = f"http://127.0.0.1:{http}"
        try:
            for _ in range(600):
                try:
                    urllib.request.urlopen(base + "/v2/health/ready", timeout=1)
                    break
                except OSError:
                    time.sleep(0.1)
            loads = []
            for name in files:
                d = repo / name
                d.mkdir()
                settings = d / "model-settings.json"
                settings.write_text(json.dumps({
                    "name": name, "implementation": "mlserver_sklearn.SKLearnModel",
                    "parameters": {"uri": str(root / "files" / f"{name}.joblib")}}))
                t = time.perf_counter()
                _post(f"{base}/v2/repository/models/{name}/load")
                loads.append((time.perf_counter() - t) * 1000)
                settings.rename(d / ".loaded.json")  # out of the next load's repository scan
        finally:
            proc.terminate()
            proc.wait(30)
    # the first load imports scikit-learn in MLServer (about a second): left out
    kind = "zlib" if args.compress else "uncompressed"
    print(f"{len(files)} models, {kind}: joblib.load median {statistics.median(direct[1:]):.1f} ms; "
          f"MLServer load median {statistics.median(loads[1:]):.1f} ms "
          f"(first {loads[0]:.0f} ms, scikit-learn imported)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
