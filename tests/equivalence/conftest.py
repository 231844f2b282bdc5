"""The references were computed with one intra-op thread; use the same here."""

import pytest
import torch


@pytest.fixture(autouse=True, scope="session")
def single_thread() -> None:
    torch.set_num_threads(1)
