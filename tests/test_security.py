"""Access to the sidecar: bearer token, TLS and mTLS, plaintext rules, the private socket.

Certificates are made at run time with `cryptography` (a CA, a server certificate
for 127.0.0.1, a client certificate); servers listen on loopback port 0 only.
"""

from __future__ import annotations

import asyncio
import datetime
import os
import pwd
import stat
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from ipaddress import IPv4Address
from pathlib import Path

import grpc
import pytest
from agent_recorder.v1 import recorder_service_pb2 as api
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from grpc_health.v1 import health_pb2, health_pb2_grpc
from support.recorder import RunningRecorder
from support.users import run_probe

from recorder_client import defaults
from recorder_client import events as ev
from recorder_client.client import RecorderClient, RetryPolicy
from recorder_client.errors import RecorderRpcError
from recorder_server.cli import build_parser
from recorder_server.cli.serve import config_from
from recorder_server.security import (
    SecurityConfigError,
    check_transport,
    is_local_address,
    tls_files,
)
from recorder_server.server import SERVICE_NAME, RecorderServer, ServerConfig

TOKEN = "s3cret-token_0123456789"
# A refused TLS handshake reads as UNAVAILABLE: retrying would only wait longer.
NO_RETRY = RetryPolicy(attempts=1)
DENIED = "missing or invalid bearer token"


# -- certificates -------------------------------------------------------------------


@dataclass
class Identity:
    cert: Path
    key: Path


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _write(
    directory: Path, stem: str, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey
) -> Identity:
    cert_path, key_path = directory / f"{stem}.crt", directory / f"{stem}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return Identity(cert_path, key_path)


def make_ca(
    directory: Path, stem: str
) -> tuple[Identity, x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(stem))
        .issuer_name(_name(stem))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    return _write(directory, stem, cert, key), cert, key


def make_leaf(
    directory: Path,
    stem: str,
    ca: tuple[Identity, x509.Certificate, ec.EllipticCurvePrivateKey],
    *,
    server: bool,
) -> Identity:
    _, ca_cert, ca_key = ca
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    usage = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(stem))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    )
    if server:
        names = [x509.IPAddress(IPv4Address("127.0.0.1")), x509.DNSName("localhost")]
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    return _write(directory, stem, builder.sign(ca_key, hashes.SHA256()), key)


@dataclass
class Pki:
    ca: Identity
    server: Identity
    client: Identity
    other_ca: Identity  # signed nothing the server knows


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    directory = tmp_path_factory.mktemp("pki")
    ca = make_ca(directory, "ca")
    return Pki(
        ca=ca[0],
        server=make_leaf(directory, "server", ca, server=True),
        client=make_leaf(directory, "client", ca, server=False),
        other_ca=make_ca(directory, "other-ca")[0],
    )


# -- helpers ------------------------------------------------------------------------


@asynccontextmanager
async def serving(short_tmp: Path, **config: object) -> AsyncIterator[RecorderServer]:
    settings = {"db_path": short_tmp / "r.db", "listen": f"unix://{short_tmp}/r.sock"}
    settings.update(config)
    async with RecorderServer(ServerConfig(shutdown_grace_s=1.0, **settings)) as server:  # type: ignore[arg-type]
        yield server


def session_events(session: str) -> list[api.EventEnvelope]:
    loop = f"{session}.cfg.0"
    return [
        api.EventEnvelope(event=ev.agent_start(agent_id="a", session_id=session, loop_id=loop)),
        api.EventEnvelope(event=ev.agent_end(loop)),
    ]


async def outcome(call: object) -> tuple[grpc.StatusCode, str]:
    """The status a raw call ends with (unary: awaited; streams: read to the end)."""
    try:
        if isinstance(call, grpc.aio.UnaryStreamCall | grpc.aio.StreamStreamCall):
            async for _ in call:
                pass
        else:
            await call  # type: ignore[misc]
    except grpc.aio.AioRpcError as error:
        return error.code(), error.details() or ""
    return grpc.StatusCode.OK, ""


def raw_calls(
    channel: grpc.aio.Channel, metadata: tuple[tuple[str, str], ...], *, hello: bool = True
) -> dict[str, object]:
    """One call of every arity, about a stored session and a missing one.

    Without `hello` the Record stream sends nothing: a refused token is checked on
    the call's metadata, and a write racing the refusal can end as INTERNAL inside
    gRPC core.
    """
    unary = channel.unary_unary(f"/{SERVICE_NAME}/GetSession", None, None)
    record_hello = api.RecordRequest(hello=api.RecordHello(writer_id="w")).SerializeToString()
    return {
        "GetSession known": unary(
            api.GetSessionRequest(session_id="known").SerializeToString(), metadata=metadata
        ),
        "GetSession missing": unary(
            api.GetSessionRequest(session_id="nope").SerializeToString(), metadata=metadata
        ),
        "Record": channel.stream_stream(f"/{SERVICE_NAME}/Record", None, None)(
            iter([record_hello] if hello else []), metadata=metadata
        ),
        "StreamEvents": channel.unary_stream(f"/{SERVICE_NAME}/StreamEvents", None, None)(
            api.StreamEventsRequest(session_id="known").SerializeToString(), metadata=metadata
        ),
        "WatchSessions": channel.unary_stream(f"/{SERVICE_NAME}/WatchSessions", None, None)(
            b"", metadata=metadata
        ),
        "unknown method": channel.unary_unary(f"/{SERVICE_NAME}/Nope", None, None)(
            b"", metadata=metadata
        ),
    }


# -- bearer token -------------------------------------------------------------------

BAD_METADATA = [
    (),
    (("authorization", "Bearer wrong"),),
    (("authorization", TOKEN),),  # the token without the scheme
    (("authorization", f"Bearer {TOKEN}x"),),
    (("authorization", f"Bearer {TOKEN}"), ("authorization", "Bearer wrong")),
]


@pytest.mark.parametrize(
    "metadata", BAD_METADATA, ids=["none", "wrong", "no-scheme", "longer", "two"]
)
async def test_a_missing_or_wrong_token_is_refused_alike_on_every_call(
    short_tmp: Path, metadata: tuple[tuple[str, str], ...]
) -> None:
    async with serving(short_tmp, token=TOKEN) as server:
        async with RecorderClient.connect(server.address, token=TOKEN) as client:
            await client.append(session_events("known"))
        async with grpc.aio.insecure_channel(server.address) as channel:
            for name, call in raw_calls(channel, metadata, hello=False).items():
                # The same answer whether or not the session exists or the method does.
                assert await outcome(call) == (grpc.StatusCode.UNAUTHENTICATED, DENIED), name


async def test_the_right_token_opens_every_call(short_tmp: Path) -> None:
    metadata = (("authorization", f"Bearer {TOKEN}"),)
    async with (
        serving(short_tmp, token=TOKEN) as server,
        RecorderClient.connect(server.address, token=TOKEN) as client,
        grpc.aio.insecure_channel(server.address) as channel,
    ):
        await client.append(session_events("known"))
        calls = raw_calls(channel, metadata)
        assert await outcome(calls["GetSession known"]) == (grpc.StatusCode.OK, "")
        assert (await outcome(calls["GetSession missing"]))[0] == grpc.StatusCode.NOT_FOUND
        assert await outcome(calls["StreamEvents"]) == (grpc.StatusCode.OK, "")
        assert (await outcome(calls["unknown method"]))[0] == grpc.StatusCode.UNIMPLEMENTED
        record, watch = calls["Record"], calls["WatchSessions"]
        assert isinstance(record, grpc.aio.StreamStreamCall)
        assert isinstance(watch, grpc.aio.UnaryStreamCall)
        ready = await record.read()
        assert isinstance(ready, bytes)
        assert api.RecordResponse.FromString(ready).HasField("ready")
        # The watch reports admissions from when it is subscribed: admit until it does.
        first = asyncio.ensure_future(watch.read())
        for n in range(50):
            await client.append(session_events(f"later{n}"))
            if (await asyncio.wait({first}, timeout=0.2))[0]:
                break
        message = await first
        assert isinstance(message, bytes)
        admitted = api.WatchSessionsResponse.FromString(message)
        assert admitted.session_id.startswith("later")
        record.cancel()
        watch.cancel()


async def test_the_client_reads_the_token_from_the_environment(
    short_tmp: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with serving(short_tmp, token=TOKEN) as server:
        monkeypatch.setenv(defaults.TOKEN_ENV, TOKEN)
        async with RecorderClient.connect(server.address) as client:
            assert await client.append(session_events("s1")) == [0, 1]
        monkeypatch.delenv(defaults.TOKEN_ENV)
        token_file = short_tmp / "token"
        token_file.write_text(f"{TOKEN}\n")
        monkeypatch.setenv(defaults.TOKEN_FILE_ENV, str(token_file))
        async with RecorderClient.connect(server.address) as client:
            assert (await client.get_session("s1")).session_id == "s1"
        monkeypatch.delenv(defaults.TOKEN_FILE_ENV)
        async with RecorderClient.connect(server.address) as client:
            with pytest.raises(RecorderRpcError) as refused:
                await client.get_session("s1")
    assert refused.value.code == grpc.StatusCode.UNAUTHENTICATED


async def test_health_and_reflection_stay_open_for_probes(short_tmp: Path) -> None:
    async with (
        serving(short_tmp, token=TOKEN) as server,
        grpc.aio.insecure_channel(server.address) as channel,
    ):
        health = health_pb2_grpc.HealthStub(channel)
        reply = await health.Check(health_pb2.HealthCheckRequest(service=SERVICE_NAME))
    assert reply.status == health_pb2.HealthCheckResponse.SERVING


def test_serve_takes_the_token_from_a_file_or_the_environment(
    short_tmp: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    token_file = short_tmp / "token"
    token_file.write_text(f"  {TOKEN}\n")
    monkeypatch.delenv(defaults.TOKEN_FILE_ENV, raising=False)
    monkeypatch.setenv(defaults.TOKEN_ENV, "from-env")
    parser = build_parser()
    assert config_from(parser.parse_args(["serve", "--token-file", str(token_file)])).token == TOKEN
    assert config_from(parser.parse_args(["serve"])).token == "from-env"
    monkeypatch.delenv(defaults.TOKEN_ENV)
    assert config_from(parser.parse_args(["serve"])).token is None
    token_file.write_text("two words")
    with pytest.raises(SecurityConfigError, match="printable ASCII without spaces"):
        config_from(parser.parse_args(["serve", "--token-file", str(token_file)]))
    with pytest.raises(SecurityConfigError, match="cannot read the token file"):
        config_from(parser.parse_args(["serve", "--token-file", str(short_tmp / "missing")]))


def test_serve_takes_the_limits() -> None:
    args = build_parser().parse_args(
        [
            "serve",
            "--max-request-bytes",
            "1000",
            "--max-events-per-batch",
            "7",
            "--max-id-length",
            "9",
            "--max-value-depth",
            "3",
        ]
    )
    limits = config_from(args).limits
    assert (limits.max_request_bytes, limits.max_events_per_batch) == (1000, 7)
    assert (limits.max_id_length, limits.max_value_depth) == (9, 3)
    with pytest.raises(SystemExit):
        build_parser().parse_args(["serve", "--max-id-length", "0"])


# -- TLS ------------------------------------------------------------------------------


async def test_tls_serves_a_client_that_trusts_the_ca(short_tmp: Path, pki: Pki) -> None:
    tls = {"tls_cert": pki.server.cert, "tls_key": pki.server.key}
    async with (
        serving(short_tmp, listen="127.0.0.1:0", **tls) as server,
        RecorderClient.connect(server.address, tls_ca=pki.ca.cert) as client,
    ):
        assert await client.append(session_events("s1")) == [0, 1]


@pytest.mark.slow
async def test_plaintext_against_a_tls_port_is_refused(short_tmp: Path, pki: Pki) -> None:
    tls = {"tls_cert": pki.server.cert, "tls_key": pki.server.key}
    async with serving(short_tmp, listen="127.0.0.1:0", **tls) as server:
        for client in (
            RecorderClient.connect(server.address, retry=NO_RETRY),
            RecorderClient.connect(server.address, tls_ca=pki.other_ca.cert, retry=NO_RETRY),
        ):
            async with client:
                with pytest.raises(RecorderRpcError) as refused:
                    await client.get_session("s1", timeout=5)
            assert refused.value.code == grpc.StatusCode.UNAVAILABLE


async def test_mtls_refuses_a_client_without_a_certificate(short_tmp: Path, pki: Pki) -> None:
    tls = {"tls_cert": pki.server.cert, "tls_key": pki.server.key, "tls_client_ca": pki.ca.cert}
    async with serving(short_tmp, listen="127.0.0.1:0", **tls) as server:
        async with RecorderClient.connect(
            server.address, tls_ca=pki.ca.cert, retry=NO_RETRY
        ) as client:
            with pytest.raises(RecorderRpcError) as refused:
                await client.get_session("s1", timeout=5)
        assert refused.value.code == grpc.StatusCode.UNAVAILABLE
        async with RecorderClient.connect(
            server.address, tls_ca=pki.ca.cert, tls_cert=pki.client.cert, tls_key=pki.client.key
        ) as client:
            assert await client.append(session_events("s1")) == [0, 1]


async def test_the_client_reads_tls_files_from_the_environment(
    short_tmp: Path, pki: Pki, monkeypatch: pytest.MonkeyPatch
) -> None:
    tls = {"tls_cert": pki.server.cert, "tls_key": pki.server.key, "tls_client_ca": pki.ca.cert}
    monkeypatch.setenv(defaults.TLS_CA_ENV, str(pki.ca.cert))
    monkeypatch.setenv(defaults.TLS_CERT_ENV, str(pki.client.cert))
    monkeypatch.setenv(defaults.TLS_KEY_ENV, str(pki.client.key))
    async with (
        serving(short_tmp, listen="127.0.0.1:0", token=TOKEN, **tls) as server,
        RecorderClient.connect(server.address, token=TOKEN) as client,
    ):
        assert await client.append(session_events("s1")) == [0, 1]


def test_client_tls_options_must_agree(pki: Pki) -> None:
    with pytest.raises(ValueError, match="go together"):
        RecorderClient.connect("127.0.0.1:1", tls_cert=pki.client.cert)
    with pytest.raises(ValueError, match="contradicts"):
        RecorderClient.connect("127.0.0.1:1", tls=False, tls_ca=pki.ca.cert)


# -- plaintext rules ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("address", "local"),
    [
        ("unix:///run/x.sock", True),
        ("127.0.0.1:50551", True),
        ("127.8.9.10:1", True),
        ("[::1]:50551", True),
        ("localhost:50551", True),
        ("0.0.0.0:50551", False),
        ("[::]:50551", False),
        (":50551", False),
        ("10.0.0.5:50551", False),
        ("recorder.example:50551", False),
    ],
)
def test_only_unix_sockets_and_loopback_count_as_local(address: str, local: bool) -> None:
    assert is_local_address(address) is local


async def test_plaintext_beyond_loopback_is_refused_before_anything_opens(short_tmp: Path) -> None:
    with pytest.raises(SecurityConfigError, match=r"requires TLS.*--insecure"):
        async with serving(short_tmp, listen="0.0.0.0:0"):
            pass
    assert not (short_tmp / "r.db").exists()


def test_tls_settings_must_agree(pki: Pki) -> None:
    check_transport("0.0.0.0:1", None, insecure=True)  # plaintext, but asked for explicitly
    both = tls_files(pki.server.cert, pki.server.key, None)
    with pytest.raises(SecurityConfigError, match="contradicts"):
        check_transport("0.0.0.0:1", both, insecure=True)
    with pytest.raises(SecurityConfigError, match="go together"):
        tls_files(pki.server.cert, None, None)
    with pytest.raises(SecurityConfigError, match="needs --tls-cert"):
        tls_files(None, None, pki.ca.cert)


@pytest.mark.slow
def test_serve_exits_with_the_reason_on_plaintext_beyond_loopback(short_tmp: Path) -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "recorder_server.cli",
            "serve",
            "--db",
            str(short_tmp / "r.db"),
            "--listen",
            "0.0.0.0:0",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert "requires TLS" in result.stderr


# -- the private socket -------------------------------------------------------------

PROBE = """
import socket, sys
s = socket.socket(socket.AF_UNIX)
try:
    s.connect(sys.argv[1])
except OSError as e:
    print(type(e).__name__)
else:
    print("connected")
"""


def _probe(socket_path: Path, *, as_user: pwd.struct_passwd | None) -> str:
    return run_probe(PROBE, [str(socket_path)], as_user=as_user).strip()


@pytest.mark.slow
@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run a probe as another user")
def test_another_local_user_cannot_open_the_socket(recorder: RunningRecorder) -> None:
    nobody = pwd.getpwnam("nobody")
    assert _probe(recorder.socket_path, as_user=None) == "connected"  # the probe can succeed
    assert stat.S_IMODE(recorder.socket_path.parent.stat().st_mode) == 0o700
    assert _probe(recorder.socket_path, as_user=nobody) == "PermissionError"
    # The socket's own mode holds even when its directory is opened up.
    recorder.socket_path.parent.chmod(0o755)
    assert _probe(recorder.socket_path, as_user=nobody) == "PermissionError"
