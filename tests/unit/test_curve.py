"""``workers.curve``: key pair files, the secret key read back, which binds need a key."""

from __future__ import annotations

import os
import stat

import pytest
import zmq

from workers import curve


@pytest.mark.parametrize("endpoint", [
    "tcp://127.0.0.1:5557", "tcp://127.3.4.5:1", "tcp://localhost:5557", "tcp://[::1]:5557",
    "ipc:///tmp/x.sock", "inproc://x",
])
def test_an_endpoint_only_this_host_can_reach_is_loopback(endpoint):
    assert curve.loopback(endpoint)


@pytest.mark.parametrize("endpoint", [
    "tcp://*:5557", "tcp://0.0.0.0:5557", "tcp://10.0.0.5:5557", "tcp://eth0:5557",
    "tcp://[::]:5557", "tcp://example.com:5557", "udp://127.0.0.1:5557",
])
def test_an_endpoint_others_may_reach_is_not_loopback(endpoint):
    assert not curve.loopback(endpoint)


def test_a_key_pair_reads_back_as_the_same_keys(tmp_path):
    secret_path, public_path, public = curve.make_pair(str(tmp_path / "agg"))

    read_public, secret = curve.read_secret(secret_path)

    assert read_public.decode() == public
    assert zmq.curve_public(secret) == read_public
    assert stat.S_IMODE(os.stat(secret_path).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(public_path).st_mode) == 0o600
    with open(public_path) as f:
        assert public in f.read()


def test_make_pair_refuses_to_replace_a_key_unless_forced(tmp_path):
    curve.make_pair(str(tmp_path / "agg"))

    with pytest.raises(FileExistsError):
        curve.make_pair(str(tmp_path / "agg"))
    assert curve.make_pair(str(tmp_path / "agg"), force=True)


def test_a_file_that_is_not_a_secret_key_is_refused_naming_it(tmp_path):
    path = tmp_path / "agg.key_secret"
    path.write_text("curve\n    public-key = \"nothing\"\n")
    path.chmod(0o600)

    with pytest.raises(ValueError, match=f"--secret-key {path}"):
        curve.read_secret(str(path))
