import pytest
import torch


@pytest.fixture
def one_thread():
    """Controller tests time nothing but train tiny policies: one torch thread keeps them
    from fighting the other tests for the cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
