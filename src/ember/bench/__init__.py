"""Benchmark and chaos tooling: uses the public package like a user program would (the top layer)."""
