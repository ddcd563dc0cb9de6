import os

import numpy as np
import pytest

import ember

# Eager composites compile once per shape signature (a C compiler call per new shape); the suite calls them
# with hundreds of shapes, so it runs them op by op unless a test turns compilation on (monkeypatch.setenv).
os.environ.setdefault("EMBER_EAGER_FUSION", "0")


@pytest.fixture(autouse=True)
def _seed():
    ember.manual_seed(0)
    np.random.seed(0)
    yield
