"""TLS on the gateway's (and the sidecar's) listeners, certificates reloaded on change.

One ``ServerTls`` per ``listen.tls`` serves every listener of the process: HTTP sites
take ``ssl_context()`` (the stdlib's, for asyncio), the gRPC server
``grpc_credentials()``. Each new connection asks for the current certificates; the
files are checked at most once a second (``Reloading``), so a rotated certificate is
used from the next connection on while established ones keep theirs. With
``client_ca_file`` a client must present a certificate that CA signed (mutual TLS).

How a reload reaches each stack: the native plane is handed each new set
(``reloading.Follower``, ``native_plane.tls_follower``); gRPC calls a fetcher on every
handshake, which hands out a new certificate configuration when the files changed;
asyncio's SSL context is fixed per listener, so its server-name callback (which OpenSSL
runs on every handshake, with or without SNI) switches the connection to the context of
the current files.
"""

from __future__ import annotations

import logging
import ssl
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from infergw.gateway.reloading import CHECK_INTERVAL_S, Reloading
from infergw.vocab.errors import InvalidArgument

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class LoadedTls:
    """One consistent set of the files, checked by loading it into an SSL context."""

    chain: bytes
    key: bytes = field(repr=False)
    client_ca: bytes | None
    context: ssl.SSLContext


class ServerTls:
    """The files of ``listen.tls`` (PEM): certificate chain, its key, clients' CA."""

    def __init__(
        self,
        cert_file: str,
        key_file: str,
        client_ca_file: str | None = None,
        interval_s: float = CHECK_INTERVAL_S,
    ) -> None:
        self.cert_file, self.key_file, self.client_ca_file = cert_file, key_file, client_ca_file
        self.mutual = client_ca_file is not None
        paths = [cert_file, key_file, *([client_ca_file] if client_ca_file else [])]
        try:
            self._files = Reloading(paths, self._load, "TLS certificate", interval_s)
        except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
            reason = getattr(exc, "strerror", None) or getattr(exc, "reason", None) or exc
            raise InvalidArgument(f"listen.tls: cannot load {', '.join(paths)}: {reason}") from exc

    def current(self) -> LoadedTls:
        """The current files (the same object until they change): the native plane's."""
        return self._files.get()

    def ssl_context(self) -> ssl.SSLContext:
        """For ``loop.create_server(ssl=...)``: each handshake uses the current files."""
        return self._files.get().context

    def grpc_credentials(self) -> grpc.ServerCredentials:
        """For ``server.add_secure_port``: each handshake uses the current files."""
        handed = self._files.get()

        def fetch() -> grpc.ServerCertificateConfiguration | None:
            nonlocal handed
            current = self._files.get()
            if current is handed:
                return None  # gRPC keeps the configuration it has
            handed = current
            return _grpc_configuration(current)

        return grpc.dynamic_ssl_server_credentials(
            _grpc_configuration(handed),
            fetch,  # type: ignore[arg-type]  # the stubs miss "None: keep the current one"
            require_client_authentication=self.mutual,
        )

    def _load(self) -> LoadedTls:
        chain, key = Path(self.cert_file).read_bytes(), Path(self.key_file).read_bytes()
        ca = Path(self.client_ca_file).read_bytes() if self.client_ca_file else None
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.load_cert_chain(self.cert_file, self.key_file)  # also checks the key fits
        if ca is not None:
            context.load_verify_locations(cadata=ca.decode("ascii"))
            context.verify_mode = ssl.CERT_REQUIRED
        context.set_alpn_protocols(["http/1.1"])  # the HTTP sites speak HTTP/1.1
        context.sni_callback = self._switch
        return LoadedTls(chain, key, ca, context)

    def _switch(self, connection: ssl.SSLObject, _name: str | None, _: ssl.SSLContext) -> None:
        current = self._files.get().context
        if connection.context is not current:
            connection.context = current


def _grpc_configuration(files: LoadedTls) -> grpc.ServerCertificateConfiguration:
    return grpc.ssl_server_certificate_configuration(
        [(files.key, files.chain)], root_certificates=files.client_ca
    )
