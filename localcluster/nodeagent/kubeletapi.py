"""The kubelet's HTTPS API, the part the API server proxies to: container logs and /healthz.

`kubectl logs` -> kube-apiserver -> https://<InternalIP>:<kubeletEndpoint.port>/containerLogs/...,
authenticated with the API server's kubelet client certificate. We accept clients whose
certificate the cluster CA signed and whose name is the API server's kubelet client (or a
system:masters member); there is no webhook authorizer to ask.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import ipaddress
import logging
import socket
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from localcluster.nodeagent import logs

log = logging.getLogger("nodeagent.kubeletapi")

ALLOWED_COMMON_NAMES = ("kube-apiserver-kubelet-client",)
ALLOWED_GROUPS = ("system:masters",)
FOLLOW_POLL = 0.25


@dataclass(frozen=True)
class LogTarget:
    path: Path
    # True once the container instance has ended and its log will not grow.
    done: Callable[[], bool]


# (namespace, pod, container, previous) -> the log, or an HTTP status and message.
LogResolver = Callable[[str, str, str, bool], "LogTarget | tuple[int, str]"]


def mint_serving_cert(pki_dir: Path, out_dir: Path, node_name: str, host_ip: str) -> tuple[Path, Path]:
    """A serving certificate for the kubelet API, signed by the cluster CA (which the API server
    trusts via --kubelet-certificate-authority)."""
    ca_cert = x509.load_pem_x509_certificate((pki_dir / "ca.crt").read_bytes())
    ca_key = serialization.load_pem_private_key((pki_dir / "ca.key").read_bytes(), password=None)
    if not isinstance(ca_key, ec.EllipticCurvePrivateKey):
        from cryptography.hazmat.primitives.asymmetric import rsa

        if not isinstance(ca_key, rsa.RSAPrivateKey):
            raise TypeError("unsupported CA key type")
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    sans: list[x509.GeneralName] = [
        x509.DNSName(node_name),
        x509.DNSName("localhost"),
        x509.IPAddress(ipaddress.ip_address(host_ip)),
    ]
    if host_ip != "127.0.0.1":
        sans.append(x509.IPAddress(ipaddress.ip_address("127.0.0.1")))
    cert = (
        x509.CertificateBuilder()
        .subject_name(
            x509.Name(
                [
                    x509.NameAttribute(NameOID.COMMON_NAME, f"system:node:{node_name}"),
                    x509.NameAttribute(NameOID.ORGANIZATION_NAME, "system:nodes"),
                ]
            )
        )
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=365))
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    crt_path = out_dir / "kubelet-serving.crt"
    key_path = out_dir / "kubelet-serving.key"
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    key_path.chmod(0o600)
    crt_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return crt_path, key_path


def _subject(cert: dict[str, Any]) -> tuple[str, list[str]]:
    cn = ""
    orgs: list[str] = []
    for rdn in cert.get("subject", ()):
        for key, value in rdn:
            if key == "commonName":
                cn = value
            elif key == "organizationName":
                orgs.append(value)
    return cn, orgs


def _int(q: dict[str, list[str]], name: str) -> int | None:
    values = q.get(name)
    if not values or values[0] == "":
        return None
    return int(values[0])


def _bool(q: dict[str, list[str]], name: str) -> bool:
    values = q.get(name) or [""]
    return values[0].lower() in ("true", "1", "yes")


class KubeletServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], ctx: ssl.SSLContext, resolve: LogResolver) -> None:
        self.ctx = ctx
        self.resolve = resolve
        self.stopping = threading.Event()
        super().__init__(address, Handler)

    def finish_request(self, request: Any, client_address: Any) -> None:
        # The TLS handshake happens here, in the request's own thread, so a slow or broken
        # client never holds up accept().
        request.settimeout(30)
        try:
            tls = self.ctx.wrap_socket(request, server_side=True)
        except (ssl.SSLError, OSError) as exc:
            log.info("TLS handshake failed", extra={"client": str(client_address), "error": str(exc)})
            return
        try:
            Handler(tls, client_address, self)
        finally:
            tls.close()


class Handler(BaseHTTPRequestHandler):
    server: KubeletServer
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        log.info("request", extra={"line": format % args})

    def _send(self, code: int, body: str) -> None:
        data = body.encode()
        self.send_response(code)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _authorized(self) -> bool:
        assert isinstance(self.connection, ssl.SSLSocket)
        cert = self.connection.getpeercert()
        if not cert:
            self._send(401, "Unauthorized: a client certificate signed by the cluster CA is required\n")
            return False
        cn, orgs = _subject(cert)
        if cn in ALLOWED_COMMON_NAMES or any(o in ALLOWED_GROUPS for o in orgs):
            return True
        self._send(403, f"Forbidden (user={cn}, verb=get, resource=nodes, subresource=log)\n")
        return False

    def do_GET(self) -> None:
        url = urlsplit(self.path)
        if url.path in ("/healthz", "/healthz/ping", "/livez", "/readyz"):
            self._send(200, "ok")
            return
        if not self._authorized():
            return
        parts = [unquote(p) for p in url.path.split("/") if p]
        if len(parts) == 4 and parts[0] == "containerLogs":
            with contextlib.suppress(BrokenPipeError, ConnectionResetError, TimeoutError, ssl.SSLError):
                self._logs(parts[1], parts[2], parts[3], parse_qs(url.query))
            return
        self._send(404, f"404 page not found: {url.path}\n")

    def _logs(self, namespace: str, pod: str, container: str, q: dict[str, list[str]]) -> None:
        try:
            opts = logs.LogOptions(
                follow=_bool(q, "follow"),
                tail_lines=_int(q, "tailLines"),
                timestamps=_bool(q, "timestamps"),
                limit_bytes=_int(q, "limitBytes"),
                since_seconds=_int(q, "sinceSeconds"),
                since_time=(q.get("sinceTime") or [""])[0] or None,
                previous=_bool(q, "previous"),
            )
        except ValueError as exc:
            self._send(400, f"invalid log options: {exc}\n")
            return
        target = self.server.resolve(namespace, pod, container, opts.previous)
        if isinstance(target, tuple):
            self._send(target[0], target[1] + "\n")
            return
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        limiter = logs.Limiter(opts.limit_bytes)
        try:
            self._stream(target, opts, limiter)
        finally:
            self.wfile.write(b"0\r\n\r\n")
            self.close_connection = True

    def _chunk(self, data: bytes, limiter: logs.Limiter) -> None:
        data = limiter.take(data)
        if data:
            self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
            self.wfile.flush()

    def _stream(self, target: LogTarget, opts: logs.LogOptions, limiter: logs.Limiter) -> None:
        try:
            f = open(target.path, "rb")  # noqa: SIM115 - read incrementally while following
        except FileNotFoundError:
            return
        with f:
            done_before = target.done()
            data = f.read()
            lines, rest = logs.complete_lines(data)
            entries = logs.initial_entries(b"\n".join(lines), opts, time.time())
            self._chunk(b"".join(logs.iter_rendered(entries, opts.timestamps)), limiter)
            if not opts.follow or limiter.exhausted:
                return
            buffer = rest
            finished = done_before
            while not limiter.exhausted and not self.server.stopping.is_set():
                chunk = f.read()
                if chunk:
                    buffer += chunk
                    lines, buffer = logs.complete_lines(buffer)
                    out = [logs.parse_line(line) for line in lines]
                    self._chunk(
                        b"".join(logs.render(e, opts.timestamps) for e in out if e is not None), limiter
                    )
                    continue
                if finished:
                    return
                # One more read after the container ended catches its last lines.
                finished = target.done()
                if not finished:
                    time.sleep(FOLLOW_POLL)


def serve(  # noqa: PLR0917
    host: str, port: int, cert: Path, key: Path, ca: Path, resolve: LogResolver
) -> tuple[KubeletServer, threading.Thread]:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(str(cert), str(key))
    ctx.load_verify_locations(cafile=str(ca))
    # Optional at the TLS layer so /healthz answers anyone; every other path demands a cert.
    ctx.verify_mode = ssl.CERT_OPTIONAL
    server = KubeletServer((host, port), ctx, resolve)
    server.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 1.0}, name="kubelet-api")
    thread.daemon = True
    thread.start()
    return server, thread
