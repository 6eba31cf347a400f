"""Carrying the engine's decisions out: runtime calls, health, the activator, gateway stats."""
