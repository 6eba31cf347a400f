"""msm's runtime adapters: servers of the model-runtime SPI (``mmesh.ModelRuntime``) in front of a
model server that does not speak it itself. ``mlserver``: the adapter for MLServer."""
