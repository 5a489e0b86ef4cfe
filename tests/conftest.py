"""Shared pytest setup: the real Omniglot files from shared/data (see ../conftest.py), loaded once
per session."""

import os

import pytest


@pytest.fixture(scope="session")
def omniglot():
  """OmniglotData (images [1623, 20, 28, 28, 1] uint8 by global character id, plus metadata)."""
  from ht_data.omniglot import read_omniglot
  return read_omniglot(os.environ["HT_DATA_DIR"])
