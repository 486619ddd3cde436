"""Test-wide settings: run on the CPU in float32 with deterministic XLA."""
import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")
