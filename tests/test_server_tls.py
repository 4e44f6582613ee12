"""`tracer serve --tls-cert --tls-key`: HTTPS that a client verifies against the certificate's
authority, and clear refusals of a half or wrong pair."""

from __future__ import annotations

import os
import ssl
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest

from .conftest import CLI, Service, clean_env, free_port, run_cli
from .helpers import wait_until

KEY = "tls-test-key"


@dataclass
class Pair:
    cert: str
    key: str


def _self_signed(directory: str, name: str) -> Pair:
    """A self-signed certificate for 127.0.0.1 (its own authority), made with openssl."""
    cert, key = os.path.join(directory, f"{name}.crt"), os.path.join(directory, f"{name}.key")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                    "ec_paramgen_curve:P-256", "-nodes", "-days", "2", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", key, "-out", cert],
                   check=True, capture_output=True, timeout=60)
    return Pair(cert, key)


@pytest.fixture(scope="module")
def pair(tmp_path_factory) -> Pair:
    return _self_signed(str(tmp_path_factory.mktemp("tls")), "server")


class TlsServer(Service):
    def __init__(self, store: str, pair: Pair, log_path: str) -> None:
        self.port = free_port()
        self.url = f"https://127.0.0.1:{self.port}"
        self.ca = ssl.create_default_context(cafile=pair.cert)  # trusts this certificate
        super().__init__("tracer serve", [*CLI, "serve", "--store", store, "--port",
                                          str(self.port), "--api-key", KEY, "--tls-cert",
                                          pair.cert, "--tls-key", pair.key],
                         log_path, clean_env())
        wait_until(self._answers, 30, lambda: f"tracer serve did not answer:\n{self.log()}")

    def _answers(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"tracer serve exited {self.proc.returncode}:\n{self.log()}")
        try:
            httpx.get(self.url + "/login", verify=self.ca, timeout=2)
        except httpx.TransportError:
            return False
        return True


@pytest.fixture(scope="module")
def server(pair, tmp_path_factory) -> Iterator[TlsServer]:
    directory = tmp_path_factory.mktemp("serve-tls")
    with TlsServer(str(directory / "traces.db"), pair, str(directory / "serve.log")) as server:
        yield server


def test_a_client_that_trusts_the_certificate_gets_answers_over_https(server) -> None:
    response = httpx.get(server.url + "/api/projects", verify=server.ca, timeout=30,
                         headers={"Authorization": f"Bearer {KEY}"})
    assert response.status_code == 200
    assert response.json() == {"projects": []}


def test_a_client_that_does_not_trust_the_certificate_is_refused_by_its_own_check(server) -> None:
    with pytest.raises(httpx.ConnectError) as caught:
        httpx.get(server.url + "/api/projects", timeout=30)  # the system's authorities
    assert isinstance(caught.value.__context__, ssl.SSLCertVerificationError) or \
        "CERTIFICATE_VERIFY_FAILED" in str(caught.value)


def test_the_server_says_https_when_it_starts(server) -> None:
    assert f"at https://127.0.0.1:{server.port}/" in server.log()


def test_a_certificate_without_its_key_is_refused(pair, tmp_path) -> None:
    done = run_cli("serve", "--store", str(tmp_path / "t.db"), "--tls-cert", pair.cert)
    assert done.returncode == 2
    assert "--tls-cert and --tls-key go together" in done.stderr


def test_a_key_of_another_certificate_is_refused_with_both_files_named(pair, tmp_path) -> None:
    other = _self_signed(str(tmp_path), "other")
    done = run_cli("serve", "--store", str(tmp_path / "t.db"), "--tls-cert", pair.cert,
                   "--tls-key", other.key)
    assert done.returncode == 2
    assert pair.cert in done.stderr and other.key in done.stderr
    assert "Traceback" not in done.stderr
