"""A throwaway PKI made with the ``openssl`` CLI: a private CA, a server
certificate for 127.0.0.1 and a client certificate, both signed by the CA.
"""

from __future__ import annotations

import shutil
import ssl
import subprocess
from dataclasses import dataclass
from pathlib import Path

# Extensions a strict verifier (Python 3.13's VERIFY_X509_STRICT) accepts:
# key usages, key identifiers, and the IP address as a subjectAltName (the
# common name is never matched against the host).
_OPENSSL_CNF = """\
[req]
distinguished_name = dn
prompt = no

[dn]
CN = unused

[ca]
basicConstraints = critical, CA:TRUE
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash

[server]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = serverAuth
subjectAltName = IP:127.0.0.1
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid

[client]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = clientAuth
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
"""

CLIENT_CN = "sidecar-test-client"


def openssl_available() -> bool:
    return shutil.which("openssl") is not None


@dataclass(frozen=True)
class Pki:
    ca_cert: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path

    def server_context(self, *, require_client_cert: bool = False) -> ssl.SSLContext:
        """What an HTTPS upstream serves with; optionally demands a CA-signed client cert."""
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(self.server_cert, self.server_key)
        if require_client_cert:
            ctx.verify_mode = ssl.CERT_REQUIRED
            ctx.load_verify_locations(cafile=self.ca_cert)
        return ctx


def _openssl(*args: str | Path, cwd: Path) -> None:
    subprocess.run(["openssl", *map(str, args)], cwd=cwd, check=True,
                   capture_output=True)


def _new_key_and_csr(name: str, subject: str, cnf: Path, cwd: Path) -> None:
    _openssl("req", "-new", "-config", cnf, "-newkey", "ec",
             "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
             "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", subject, cwd=cwd)


def _sign(name: str, extensions: str, serial: int, cnf: Path, cwd: Path) -> None:
    _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
             "-set_serial", str(serial), "-days", "2", "-extfile", cnf,
             "-extensions", extensions, "-out", f"{name}.crt", cwd=cwd)


def make_pki(directory: Path) -> Pki:
    """Write a CA, a server and a client certificate (EC P-256, two days) into ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    cnf = directory / "openssl.cnf"
    cnf.write_text(_OPENSSL_CNF, encoding="utf-8")
    _openssl("req", "-x509", "-new", "-config", cnf, "-extensions", "ca",
             "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
             "-keyout", "ca.key", "-out", "ca.crt", "-days", "2",
             "-subj", "/CN=integration-sidecar test CA", cwd=directory)
    _new_key_and_csr("server", "/CN=127.0.0.1", cnf, directory)
    _sign("server", "server", 1001, cnf, directory)
    _new_key_and_csr("client", f"/CN={CLIENT_CN}", cnf, directory)
    _sign("client", "client", 1002, cnf, directory)
    return Pki(
        ca_cert=directory / "ca.crt",
        server_cert=directory / "server.crt",
        server_key=directory / "server.key",
        client_cert=directory / "client.crt",
        client_key=directory / "client.key",
    )
