"""Shared bits of the test_geometry_* files."""
import pytest
import torch


@pytest.fixture(autouse=True, scope="module")
def single_thread():
    """The small CPU models run ~10x faster on one thread than with OpenMP threads fighting
    other jobs on a busy 2-core machine; restore the setting for other test modules."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
