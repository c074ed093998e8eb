"""Shared test fixtures."""

import pytest
import torch


@pytest.fixture(scope="module")
def one_thread():
    """The machine has 2 cores shared with other jobs; oversubscribed torch threads make the
    tiny models in these tests several times slower, so use one thread and restore it after."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
