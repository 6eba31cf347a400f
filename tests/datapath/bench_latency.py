"""Added latency of the gateway's data path vs calling MLServer directly.

    .venv/bin/python tests/datapath/bench_latency.py [-n 500]

Starts one MLServer (digits SVM) and one Envoy built from data_path's filters on loopback,
sends the article's single-row request sequentially over kept-alive connections, and prints
median / p99 in milliseconds per path. Not a pytest test (timing on a shared machine is noisy).
"""

from __future__ import annotations

import argparse
import http.client
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import grpc

sys.path.insert(0, str(Path(__file__).resolve().parent))
import dp_harness as h

from xds_server.protos import inference_v2_pb2 as pb

INFER = "/inference.GRPCInferenceService/ModelInfer"


def timed(fn: Callable[[], None], n: int, warmup: int = 30) -> tuple[float, float]:
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - t0) * 1000)
    samples.sort()
    return statistics.median(samples), samples[min(len(samples) - 1, int(len(samples) * 0.99))]


def rest_caller(port: int, path: str, body: str, expect: str) -> Callable[[], None]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    data = body.encode()

    def call() -> None:
        conn.request("POST", path, body=data, headers={"content-type": "application/json"})
        r = conn.getresponse()
        out = r.read()
        if r.status != 200 or expect.encode() not in out:
            raise RuntimeError(f"{path}: {r.status} {out[:200]!r}")

    return call


def grpc_caller(port: int, model: str, metadata: tuple[tuple[str, str], ...]) -> Callable[[], None]:
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    req = pb.ModelInferRequest(model_name=model)
    t = req.inputs.add(name="predict", datatype="FP32", shape=[1, 64])
    t.contents.fp32_contents.extend(h.ARTICLE_PIXELS)
    stub = channel.unary_unary(INFER, request_serializer=lambda m: m.SerializeToString(),
                               response_deserializer=pb.ModelInferResponse.FromString)

    def call() -> None:
        resp = stub(req, metadata=metadata, timeout=30)
        if list(resp.outputs[0].contents.int64_contents) != [8]:
            raise RuntimeError(f"gRPC: unexpected answer {resp}")

    return call


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("-n", type=int, default=500)
    args = ap.parse_args()
    data = json.dumps({"inputs": [{"name": "predict", "shape": [1, 64], "datatype": "FP32",
                                   "data": h.ARTICLE_PIXELS}]})
    with tempfile.TemporaryDirectory() as tmp, h.mesh(Path(tmp), {"sklearn-mnist": h.REVISION}) as (ml, gw):
        rows = [
            ("REST data body, direct MLServer", rest_caller(ml.http_port, f"/v2/models/{h.REVISION}/infer",
                                                            data, '"data":[8]')),
            ("REST data body, gateway (classify Lua -> REST port)",
             rest_caller(gw.rest_port, "/v2/models/sklearn-mnist/infer", data, '"data":[8]')),
            ("REST article body, gateway (Lua + transcoder + rewrite -> gRPC port)",
             rest_caller(gw.rest_port, "/v2/models/sklearn-mnist/infer", h.ARTICLE_BODY,
                         '"int64Contents":["8"]')),
            ("gRPC ModelInfer, direct MLServer", grpc_caller(ml.grpc_port, h.REVISION, ())),
            ("gRPC ModelInfer, gateway (rewrite Lua)",
             grpc_caller(gw.grpc_port, "sklearn-mnist", ((h.MODEL_HEADER, "sklearn-mnist"),))),
        ]
        print(f"{'path':72} {'median ms':>9} {'p99 ms':>8}   (n={args.n}, sequential)")
        for label, fn in rows:
            med, p99 = timed(fn, args.n)
            print(f"{label:72} {med:9.2f} {p99:8.2f}")


if __name__ == "__main__":
    main()
