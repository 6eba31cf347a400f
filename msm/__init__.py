"""The msm programs: subcommands and per-process wiring only.

Each module here builds one process out of parts from ``xds_server/`` and ``placement/`` and
runs it; the decisions live in those packages, never here.
"""
