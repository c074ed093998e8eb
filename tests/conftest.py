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


@pytest.fixture(scope="session")
def tiny_corpus(tmp_path_factory):
    """A small speech corpus (espeak-ng + flite voices, ~40 s of training speech, one
    held-out sentence per voice); skipped where the synthesizers are missing."""
    import shutil

    if shutil.which("espeak-ng") is None or shutil.which("flite") is None:
        pytest.skip("make test installs espeak-ng and flite")
    from tinysora.voice.corpus import build_corpus

    out = tmp_path_factory.mktemp("corpus")
    build_corpus(out, hours=0.012, engines=("espeak", "flite"), test_per_voice=(1, 1))
    return out
