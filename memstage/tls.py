"""TLS for every gRPC port: PEM files named by settings (tls_cert, tls_key, tls_ca), loaded once.

A server with a certificate serves TLS only; with tls_ca too it also requires client certificates
signed by that CA (mutual TLS). A client with tls_ca verifies the server against it, and presents
its own certificate when it has one. Certificates are checked against `tls_server_name` when it is
set (one name for a whole deployment, so benefactors on changing addresses need no certificate of
their own), else against the host of the address dialled.

`make_deployment_certs` is what `memstage up` uses: a private CA and one certificate (for 127.0.0.1,
localhost, this host and the name "memstage") that every role and client of the deployment presents.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import socket
import ssl
from dataclasses import dataclass
from pathlib import Path

import grpc

from memstage.errors import SettingError

DEPLOYMENT_NAME = "memstage"  # the name every certificate made by `memstage up` carries


@dataclass(frozen=True, slots=True)
class Tls:
    cert: bytes | None = None
    key: bytes | None = None
    ca: bytes | None = None
    server_name: str = ""

    @property
    def enabled(self) -> bool:
        return bool(self.cert or self.ca)

    def server_credentials(self, setting: str = "tls_cert") -> grpc.ServerCredentials:
        if not (self.cert and self.key):
            raise SettingError(f"{setting}: a TLS server needs both tls_cert and tls_key")
        return grpc.ssl_server_credentials([(self.key, self.cert)], root_certificates=self.ca,
                                           require_client_auth=self.ca is not None)

    def channel_credentials(self) -> grpc.ChannelCredentials:
        return grpc.ssl_channel_credentials(root_certificates=self.ca, private_key=self.key,
                                            certificate_chain=self.cert)

    def channel_options(self) -> list[tuple[str, str]]:
        return [("grpc.ssl_target_name_override", self.server_name)] if self.server_name else []

    def server_context(self, setting: str = "tls_cert") -> ssl.SSLContext:
        """The same rules as server_credentials, for a socket of Python's ssl (TLS 1.3 only)."""
        if not (self.cert and self.key):
            raise SettingError(f"{setting}: a TLS server needs both tls_cert and tls_key")
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_3
        _load_chain(ctx, self.cert, self.key)
        if self.ca is not None:
            ctx.load_verify_locations(cadata=self.ca.decode())
            ctx.verify_mode = ssl.CERT_REQUIRED
        return ctx

    def client_context(self) -> ssl.SSLContext:
        """The same rules as channel_credentials; dial with server_hostname=self.server_name or the host."""
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_3
        if self.ca is not None:
            ctx.load_verify_locations(cadata=self.ca.decode())
        else:
            ctx.load_default_certs()
        if self.cert and self.key:
            _load_chain(ctx, self.cert, self.key)
        return ctx


def _load_chain(ctx: ssl.SSLContext, cert: bytes, key: bytes) -> None:
    """ssl loads a certificate and key only from a file: hand it an anonymous one (the PEM bytes
    were read once, at start, and may no longer be at their path)."""
    fd = os.memfd_create("memstage-tls", os.MFD_CLOEXEC)
    try:
        os.write(fd, cert + b"\n" + key)
        ctx.load_cert_chain(f"/proc/self/fd/{fd}")
    finally:
        os.close(fd)


def _read(path: str, setting: str) -> bytes | None:
    if not path:
        return None
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise SettingError(f"{setting}: cannot read {path!r} ({e.strerror})") from None
    if b"-----BEGIN " not in data:
        raise SettingError(f"{setting}: {path!r} is not a PEM file")
    return data


def load(cert: str = "", key: str = "", ca: str = "", server_name: str = "") -> Tls:
    if bool(cert) != bool(key):
        raise SettingError("tls_cert and tls_key: give both (a certificate and its private key) or neither")
    return Tls(_read(cert, "tls_cert"), _read(key, "tls_key"), _read(ca, "tls_ca"), server_name)


def client_certs(folder: str) -> dict[str, str]:
    """The client identity make_deployment_certs wrote in `folder` (client.pem: client use only, it
    cannot serve), as settings; the role certificate where an earlier release made only that."""
    out = Path(folder)
    if (out / "client.pem").exists() and (out / "client-key.pem").exists():
        return {"tls_ca": str(out / "ca.pem"), "tls_cert": str(out / "client.pem"),
                "tls_key": str(out / "client-key.pem"), "tls_server_name": DEPLOYMENT_NAME}
    return make_deployment_certs(folder)


def make_deployment_certs(folder: str) -> dict[str, str]:
    """A CA and two certificates for the deployment in `folder` (kept if already there): cert.pem
    for its roles (the manager and benefactors serve with it and dial each other with it) and
    client.pem for clients, whose key usage is client authentication only, so that no client can
    pose as a server (gRPC refuses a server certificate without server use), and metrics.pem for
    scrapers (/metrics shows it, and the roles, the series that name namespaces). Returns the roles'
    paths as settings: tls_ca, tls_cert, tls_key, tls_server_name (client_certs gives the client's)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    out = Path(folder)
    paths = {"tls_ca": str(out / "ca.pem"), "tls_cert": str(out / "cert.pem"), "tls_key": str(out / "key.pem"),
             "tls_server_name": DEPLOYMENT_NAME}
    if all(Path(p).exists() for k, p in paths.items() if k != "tls_server_name"):
        return paths
    out.mkdir(parents=True, exist_ok=True, mode=0o700)
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "memstage deployment CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
          .not_valid_after(now + datetime.timedelta(days=3650))
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    names: list[x509.GeneralName] = [x509.DNSName(DEPLOYMENT_NAME), x509.DNSName("localhost"),
                                     x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
    host = socket.gethostname()
    if host and host != "localhost":
        names.append(x509.DNSName(host))
    def signed(common_name: str, public: ec.EllipticCurvePublicKey, uses: list[x509.ObjectIdentifier]
               ) -> x509.Certificate:
        return (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME,
                                                                                     common_name)]))
                .issuer_name(ca_name).public_key(public).serial_number(x509.random_serial_number())
                .not_valid_before(now - datetime.timedelta(minutes=5))
                .not_valid_after(now + datetime.timedelta(days=825))
                .add_extension(x509.SubjectAlternativeName(names), critical=False)
                .add_extension(x509.ExtendedKeyUsage(uses), critical=True)
                .sign(ca_key, hashes.SHA256()))

    cert = signed(DEPLOYMENT_NAME, key.public_key(), [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH])
    client_key = ec.generate_private_key(ec.SECP256R1())
    client = signed(f"{DEPLOYMENT_NAME} client", client_key.public_key(), [ExtendedKeyUsageOID.CLIENT_AUTH])
    # The scrapers' (Prometheus): /metrics shows series that name namespaces to it, not to clients.
    metrics_key = ec.generate_private_key(ec.SECP256R1())
    metrics = signed(f"{DEPLOYMENT_NAME} metrics", metrics_key.public_key(), [ExtendedKeyUsageOID.CLIENT_AUTH])
    pem = serialization.Encoding.PEM
    private = serialization.PrivateFormat.PKCS8
    _write(paths["tls_ca"], ca.public_bytes(pem), 0o644)
    _write(str(out / "client.pem"), client.public_bytes(pem), 0o644)
    _write(str(out / "client-key.pem"), client_key.private_bytes(pem, private, serialization.NoEncryption()), 0o600)
    _write(str(out / "metrics.pem"), metrics.public_bytes(pem), 0o644)
    _write(str(out / "metrics-key.pem"), metrics_key.private_bytes(pem, private, serialization.NoEncryption()),
           0o600)
    _write(paths["tls_cert"], cert.public_bytes(pem), 0o644)
    _write(paths["tls_key"], key.private_bytes(pem, private, serialization.NoEncryption()), 0o600)
    return paths


def _write(path: str, data: bytes, mode: int) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
