"""The placement engine: pure decisions (no I/O), driven by an injected clock and seeded RNG."""
