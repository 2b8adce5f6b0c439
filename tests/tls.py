"""Real TLS for the security tests: certificates made with openssl, and nginx in front of Dagster.

Nginx writes its config under a test directory and runs the real binary from
Debian's package (scripts/ensure-system-deps.sh) as a `ManagedProcess`, so
stopping it ends its whole process group.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
from dataclasses import dataclass
from pathlib import Path

from service.dev.stack import ManagedProcess, free_port, port_open, wait_until


@dataclass(frozen=True)
class CertPair:
    cert: Path
    key: Path


def _openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True, timeout=60)


def make_ca(directory: Path, name: str) -> CertPair:
    """A self-signed CA certificate and its key."""
    directory.mkdir(parents=True, exist_ok=True)
    ca = CertPair(directory / f"{name}.pem", directory / f"{name}.key")
    _openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
             "-keyout", str(ca.key), "-out", str(ca.cert), "-days", "2", "-subj", f"/CN={name}",
             "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign")
    return ca


def issue_server_cert(directory: Path, ca: CertPair, name: str = "server", usage: str = "serverAuth") -> CertPair:
    """A certificate for 127.0.0.1 and localhost signed by `ca`; `usage="clientAuth"` for a client's."""
    pair = CertPair(directory / f"{name}.pem", directory / f"{name}.key")
    csr = directory / f"{name}.csr"
    ext = directory / f"{name}.ext"
    ext.write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\n"
                   f"keyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage={usage}\n")
    _openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
             "-keyout", str(pair.key), "-out", str(csr), "-subj", f"/CN={name}")
    _openssl("x509", "-req", "-in", str(csr), "-CA", str(ca.cert), "-CAkey", str(ca.key), "-CAcreateserial",
             "-out", str(pair.cert), "-days", "2", "-extfile", str(ext))
    return pair


NGINX_CONF = """\
worker_processes 1;
daemon off;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
events {{ worker_connections 64; }}
http {{
    access_log {prefix}/access.log;
    client_body_temp_path {prefix}/body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;
    client_max_body_size 64m;
    client_body_buffer_size 16m;
    proxy_buffering off;
    server {{
        listen 127.0.0.1:{port} ssl;
        ssl_certificate {cert};
        ssl_certificate_key {key};
        location / {{
            if ($http_{header} != "{token}") {{ return 401; }}
            {rule}
            proxy_pass {upstream};
            proxy_set_header Host $host;
        }}
    }}
}}
"""


class Nginx:
    """nginx terminating TLS in front of `upstream`, answering 401 without the right token in its header."""

    def __init__(self, workdir: Path, server: CertPair, upstream: str, token: str, rule: str = "",
                 name: str = "nginx", header: str = "dagster_cloud_api_token") -> None:
        """`rule`: nginx directives run before the request is passed on (e.g. `return 429;`); `header`: which
        request header must carry `token` (nginx's name: lower case, `_` for `-`; `authorization` for basic auth)."""
        self.port = free_port()
        self.prefix = workdir / name
        self.prefix.mkdir(parents=True, exist_ok=True)
        self.conf = self.prefix / "nginx.conf"
        self.settings = {"prefix": self.prefix, "port": self.port, "cert": server.cert, "key": server.key,
                         "upstream": upstream, "token": token, "rule": rule, "header": header}
        self.conf.write_text(NGINX_CONF.format(**self.settings))
        binary = shutil.which("nginx") or "/usr/sbin/nginx"
        self.process = ManagedProcess("nginx", [binary, "-p", str(self.prefix), "-c", str(self.conf)],
                                      self.prefix / "nginx.log")

    @property
    def access_log(self) -> Path:
        return self.prefix / "access.log"

    def reconfigure(self, **settings: str) -> None:
        """Change the token or the rule and reload nginx (SIGHUP to its master process)."""
        self.settings.update(settings)
        self.conf.write_text(NGINX_CONF.format(**self.settings))
        assert self.process.proc is not None
        os.kill(self.process.proc.pid, signal.SIGHUP)

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def start(self, timeout_s: float = 20.0) -> None:
        self.process.start()
        wait_until(lambda: self.process.check_alive() or port_open(self.port), timeout_s, "nginx")

    def stop(self) -> None:
        self.process.stop()
