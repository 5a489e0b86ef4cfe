"""Environment for every test directory (tests/ and parity_tests/), set before JAX is imported."""

import os
import pathlib

REPO = pathlib.Path(__file__).resolve().parent
# The real Omniglot beside the checkout (../shared/data), as in CI.
os.environ.setdefault("HT_DATA_DIR", str(REPO.parent / "shared" / "data"))

# JAX compiles the same small models in many tests and subprocesses: a persistent compilation
# cache (per checkout, outside git) makes every compile after the first a cache hit.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", str(REPO / ".jax_cache"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")
