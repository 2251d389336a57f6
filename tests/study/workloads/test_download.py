"""The real tensorflow-datasets download path, with the network unavailable:
it must get as far as the network (no missing package) and leave nothing
half-made."""

import os
import socket

import pytest
import tensorflow_datasets as tfds
from urllib3.util.retry import Retry

from keras_sam.study.workloads import DatasetUnavailableError
from keras_sam.study.workloads.datasets import load_split


@pytest.fixture
def offline(monkeypatch):
    """No name resolution, no connections, no retry back-off sleeps."""

    def unreachable(*args, **kwargs):
        raise socket.gaierror(socket.EAI_NONAME, "network disabled by the test")

    monkeypatch.setattr(socket, "getaddrinfo", unreachable)
    monkeypatch.setattr(socket, "create_connection", unreachable)
    monkeypatch.setattr(socket.socket, "connect", unreachable)
    monkeypatch.setattr(Retry, "sleep", lambda self, response=None: None)


def _causes(error):
    while error is not None:
        yield error
        error = error.__cause__ or error.__context__


def test_download_reaches_the_network_and_leaves_nothing_half_made(tmp_path, offline):
    data_dir = tmp_path / "tfds"
    with pytest.raises(DatasetUnavailableError, match="--data-dir") as info:
        load_split("mnist", "train", data_dir=str(data_dir), download=True)
    chain = list(_causes(info.value))
    assert not any(isinstance(e, ImportError) for e in chain), chain
    assert any(isinstance(e, OSError) for e in chain), chain  # a network error
    assert "network disabled by the test" in str(info.value)
    version = tfds.builder("mnist", data_dir=str(data_dir)).data_dir
    assert not os.path.exists(version)
    assert not os.path.exists(data_dir / "mnist")
    leftovers = [
        os.path.join(root, name)
        for root, dirs, files in os.walk(data_dir)
        for name in dirs + files
        if ".tmp." in name or ".incomplete" in name
    ]
    assert leftovers == []
