"""The bad-input corpus, written once per session, and a tiny SavedModel for it."""

from __future__ import annotations

import pytest

from tests.reliability.corpus import write_corpus


@pytest.fixture(scope="session")
def corpus(tmp_path_factory):
    """``(root, cases)`` of the bad-input corpus."""
    root = tmp_path_factory.mktemp("corpus")
    return root, write_corpus(root, seed=0)


@pytest.fixture(scope="session")
def oracle(tmp_path_factory):
    """A real SavedModel (bands B02,B03,B04, 16 px tiles) whose answers are known."""
    from tests.factories import save_oracle

    return save_oracle(tmp_path_factory.mktemp("oracle") / "model")
