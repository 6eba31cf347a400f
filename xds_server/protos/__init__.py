"""Protocol definitions msm ships: the KServe V2 inference service (``inference_v2.proto``)."""
