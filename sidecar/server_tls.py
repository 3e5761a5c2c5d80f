"""TLS material for the sidecar's own listeners: read, checked, loaded into contexts.

Files are read once into bytes, and exactly those bytes are checked (the key
matches the certificate, the CA parses) and then served, so a certificate and
key replaced one after the other can never be loaded as a mismatched pair.
"""

from __future__ import annotations

import contextlib
import os
import ssl
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol


class TlsFiles(Protocol):
    """The files of one listener's TLS (the config's ``server.*.tls`` is one)."""

    @property
    def cert_file(self) -> str: ...

    @property
    def key_file(self) -> str: ...

    @property
    def client_ca_file(self) -> str: ...


class TlsFileError(Exception):
    """A listener's certificate, key or client CA is unusable; names the config field."""

    def __init__(self, field_path: str, message: str) -> None:
        super().__init__(f"{field_path}: {message}")
        self.field = field_path
        self.message = message


@dataclass(frozen=True)
class TlsMaterial:
    cert_chain: bytes
    #: Never logged or shown: repr leaves it out.
    key: bytes = field(repr=False)
    client_ca: bytes | None = None


def _read(path: str, field_path: str) -> bytes:
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise TlsFileError(field_path, f"cannot read {path}: {exc.strerror}") from None
    except ValueError:  # a NUL byte in the name
        raise TlsFileError(field_path, f"cannot read {path!r}: not a file name") from None
    if b"-----BEGIN " not in data:
        raise TlsFileError(field_path, f"{path} is not a PEM file")
    return data


@contextlib.contextmanager
def _private_file(data: bytes) -> Iterator[str]:
    """A path OpenSSL can read ``data`` from: an anonymous memory file where the
    system has them, else a 0600 temporary file removed at once."""
    memfd = getattr(os, "memfd_create", None)
    if memfd is not None and Path("/proc/self/fd").is_dir():
        fd = memfd("sidecar-tls", 0)
        try:
            os.write(fd, data)
            yield f"/proc/self/fd/{fd}"
        finally:
            os.close(fd)
        return
    fd, path = tempfile.mkstemp(prefix="sidecar-tls-")
    try:
        os.write(fd, data)
        os.close(fd)
        yield path
    finally:
        os.unlink(path)


def load_chain(context: ssl.SSLContext, material: TlsMaterial) -> None:
    """Load certificate and key into ``context``; later handshakes use them."""
    with _private_file(material.cert_chain) as cert, _private_file(material.key) as key:
        context.load_cert_chain(cert, key)


def server_context(material: TlsMaterial) -> ssl.SSLContext:
    """A TLS server context (1.2 or later, the ssl module's default ciphers)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    load_chain(context, material)
    if material.client_ca is not None:
        context.verify_mode = ssl.CERT_REQUIRED
        context.load_verify_locations(cadata=material.client_ca.decode("ascii", "replace"))
    return context


def read_material(config: TlsFiles, field_prefix: str) -> TlsMaterial:
    """Read and check one listener's files; raises ``TlsFileError`` naming the field."""
    material = TlsMaterial(
        cert_chain=_read(config.cert_file, f"{field_prefix}.cert_file"),
        key=_read(config.key_file, f"{field_prefix}.key_file"),
        client_ca=(_read(config.client_ca_file, f"{field_prefix}.client_ca_file")
                   if config.client_ca_file else None),
    )
    try:
        scratch = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        load_chain(scratch, material)
    except (ssl.SSLError, OSError, ValueError) as exc:
        # The reason comes from OpenSSL (e.g. KEY_VALUES_MISMATCH); never file contents.
        reason = getattr(exc, "reason", None) or type(exc).__name__
        raise TlsFileError(f"{field_prefix}.cert_file",
                           f"cannot load {config.cert_file} with key_file "
                           f"{config.key_file}: {reason}") from None
    if material.client_ca is not None:
        try:
            scratch.load_verify_locations(cadata=material.client_ca.decode("ascii"))
        except (ssl.SSLError, ValueError) as exc:
            reason = getattr(exc, "reason", None) or type(exc).__name__
            raise TlsFileError(f"{field_prefix}.client_ca_file",
                               f"{config.client_ca_file} holds no usable CA certificate: "
                               f"{reason}") from None
    return material
