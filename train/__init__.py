"""Thin entry points: parse flags -> frozen config -> run(config)."""
