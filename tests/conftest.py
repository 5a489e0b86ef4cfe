"""Shared pytest setup: the real Omniglot files from shared/data, loaded once per session."""

import os
import pathlib

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
os.environ.setdefault("HT_DATA_DIR", str(REPO.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def omniglot():
  """OmniglotData (images [1623, 20, 28, 28, 1] uint8 by global character id, plus metadata)."""
  from ht_data.omniglot import read_omniglot
  return read_omniglot(os.environ["HT_DATA_DIR"])


# JAX compiles the same small models in many tests and subprocesses: a persistent compilation
# cache (per checkout, outside git) makes every compile after the first a cache hit.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", str(REPO / ".jax_cache"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")
