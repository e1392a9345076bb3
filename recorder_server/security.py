"""Who may reach the sidecar: TLS for the transport, one bearer-token check per call.

The threat model is a sidecar on the agent's own machine. The default Unix socket
(mode 0600 in a 0700 directory) already keeps other local users out, so neither
TLS nor a token is required there. Loopback TCP is open to every local user: the
token is what keeps them out. Any other TCP address crosses a network, so plaintext
there is refused at startup unless the operator says `insecure` explicitly.
"""

from __future__ import annotations

import hmac
import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc

from recorder_server.interceptors import Interceptor

if TYPE_CHECKING:
    from recorder_server.interceptors import Context, Continuation, Handler


class SecurityConfigError(ValueError):
    """A listen address and TLS/token settings that must not be combined."""


@dataclass(frozen=True, slots=True)
class TlsFiles:
    """PEM files of the server's identity, and the CA its clients must present (mTLS)."""

    cert: Path
    key: Path
    client_ca: Path | None = None


def tls_files(cert: Path | None, key: Path | None, client_ca: Path | None) -> TlsFiles | None:
    """The TLS setting the three file options make up; None means plaintext."""
    if cert is None and key is None:
        if client_ca is not None:
            raise SecurityConfigError("--tls-client-ca needs --tls-cert and --tls-key")
        return None
    if cert is None or key is None:
        raise SecurityConfigError("--tls-cert and --tls-key go together")
    return TlsFiles(cert, key, client_ca)


def server_credentials(tls: TlsFiles) -> grpc.ServerCredentials:
    """Read the PEM files now, so a missing file fails at startup, not at the first call."""
    try:
        pair = (tls.key.read_bytes(), tls.cert.read_bytes())
        client_ca = tls.client_ca.read_bytes() if tls.client_ca is not None else None
    except OSError as exc:
        raise SecurityConfigError(f"cannot read a TLS file: {exc}") from exc
    return grpc.ssl_server_credentials(
        [pair], root_certificates=client_ca, require_client_auth=client_ca is not None
    )


def is_local_address(address: str) -> bool:
    """Unix sockets and loopback TCP; a host name other than localhost counts as remote.

    Names are not resolved: a name that happens to resolve to loopback today may not
    tomorrow, and refusing it only costs the operator a `127.0.0.1`.
    """
    if address.startswith(("unix:", "unix-abstract:")):
        return True
    host = address.rsplit(":", 1)[0] if ":" in address else address
    return is_loopback_host(host.removeprefix("[").removesuffix("]"))


def is_loopback_host(host: str) -> bool:
    """`localhost` or a loopback IP literal (names are not resolved; see above)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_transport(listen: str, tls: TlsFiles | None, insecure: bool) -> None:
    """Refuse plaintext beyond loopback unless the operator asked for it explicitly."""
    if tls is not None and insecure:
        raise SecurityConfigError("--insecure contradicts --tls-cert: choose one")
    if tls is None and not insecure and not is_local_address(listen):
        raise SecurityConfigError(
            f"listening on {listen} (not loopback) requires TLS: give --tls-cert and "
            "--tls-key, or --insecure to accept plaintext on the network"
        )


def open_listener_warning(listen: str, tls: TlsFiles | None, token: str | None) -> str | None:
    """What to tell the operator when a listener lets callers in without a secret.

    A socket path is private by its file mode; any TCP port or abstract socket
    without a token (or client certificates) admits every local user, and a
    non-loopback one everybody who can reach it.
    """
    if token is not None or listen.startswith("unix:"):
        return None
    if tls is not None and tls.client_ca is not None:
        return None
    who = "every local user" if is_local_address(listen) else "anyone who can reach it"
    plain = "plaintext " if tls is None else ""
    return (
        f"{listen} accepts {plain}calls from {who} without a token: "
        "give --token-file (or listen on a Unix socket path)"
    )


def check_token(token: str) -> str:
    """A token must fit an HTTP/2 header value as `Bearer <token>` sends it."""
    if not token or not token.isascii() or not token.isprintable() or " " in token:
        raise SecurityConfigError("the token must be non-empty printable ASCII without spaces")
    return token


async def _deny(requests: Any, context: Context) -> None:
    # The same answer for every refused call, before any handler runs: nothing in
    # it tells whether the session or loop named in the request exists.
    await context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing or invalid bearer token")


# One stream-stream handler answers calls of every arity: on the wire they differ
# only in how many messages flow, and it reads none before it refuses.
_DENIED = grpc.stream_stream_rpc_method_handler(_deny)


class TokenInterceptor(Interceptor):
    """Require `authorization: Bearer <token>` on every call except to open services.

    Open services (health, reflection) reveal liveness and the public schema only,
    so probes and generic tools need no secret. Everything else, unknown method
    paths included, is refused before a handler is even looked up.
    """

    def __init__(self, token: str, open_services: Iterable[str]) -> None:
        self._expected = f"Bearer {check_token(token)}".encode()
        self._open_prefixes = tuple(f"/{name}/" for name in open_services)

    async def intercept_service(
        self, continuation: Continuation, handler_call_details: grpc.HandlerCallDetails
    ) -> Handler:
        method: str = handler_call_details.method
        if method.startswith(self._open_prefixes) or self._authorized(
            handler_call_details.invocation_metadata
        ):
            return await continuation(handler_call_details)
        return _DENIED

    def _authorized(self, metadata: Iterable[tuple[str, str | bytes]] | None) -> bool:
        values = [value for key, value in metadata or () if key == "authorization"]
        if len(values) != 1 or not isinstance(values[0], str):
            return False
        # compare_digest: the time taken does not depend on how much of it matched.
        return hmac.compare_digest(values[0].encode(), self._expected)
