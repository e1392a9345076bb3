"""`serve` refuses bad settings in one line (exit 2) before it creates anything."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
from support.mounts import tmpfs
from support.serving import refusal, run_serve, serving

NO_DEFAULTS = {"AGENT_RECORDER_DB": "", "AGENT_RECORDER_TARGET": ""}


@pytest.mark.parametrize(
    ("case", "db", "message"),
    [
        ("proc", "/proc/r.db", "--db /proc/r.db is on /proc, which cannot hold a database"),
        ("sys", "/sys/r.db", "--db /sys/r.db is on /sys, which cannot hold a database"),
        ("file", "{tmp}/file/r.db", "--db {tmp}/file/r.db: {tmp}/file is not a directory"),
        ("deeper", "{tmp}/file/x/r.db", "--db {tmp}/file/x/r.db: {tmp}/file is not a directory"),
        ("directory", "{tmp}", "--db {tmp} is a directory: name a database file in it"),
        (
            "typo",
            "{tmp}/tpyo/r.db",
            "--db {tmp}/tpyo/r.db: directory {tmp}/tpyo does not exist "
            "(check the path, or give --create to make it)",
        ),
    ],
)
def test_a_database_path_that_cannot_work_is_refused_in_one_line(
    short_tmp: Path, case: str, db: str, message: str
) -> None:
    (short_tmp / "file").write_text("not a directory")
    before = sorted(short_tmp.iterdir())
    db_arg = db.format(tmp=short_tmp)
    result = run_serve("--db", db_arg, "--listen", f"unix://{short_tmp / 'r.sock'}")
    assert refusal(result) == f"agent-recorder: {message.format(tmp=short_tmp)}"
    assert sorted(short_tmp.iterdir()) == before  # nothing created, not even the socket


def test_a_database_on_a_read_only_filesystem_is_refused(short_tmp: Path) -> None:
    with tmpfs(short_tmp / "ro", "ro,size=64k") as mount:
        for db in (mount / "r.db", mount / "sub" / "r.db"):
            result = run_serve(
                "--db", str(db), "--create", "--listen", f"unix://{short_tmp / 'r.sock'}"
            )
            assert refusal(result) == f"agent-recorder: --db {db}: directory {mount} is read-only"


@pytest.mark.parametrize(
    ("listen", "message"),
    [
        ("127.0.0.1:99999", "--listen 127.0.0.1:99999: port '99999' is not a number 0-65535"),
        ("127.0.0.1:http", "--listen 127.0.0.1:http: port 'http' is not a number 0-65535"),
        ("localhost", "--listen localhost: give host:port, or unix:///path/to.sock"),
    ],
)
def test_an_invalid_listen_address_is_refused_in_one_line(
    short_tmp: Path, listen: str, message: str
) -> None:
    result = run_serve("--db", str(short_tmp / "r.db"), "--listen", listen)
    assert refusal(result) == f"agent-recorder: {message}"
    assert not (short_tmp / "r.db").exists()


def test_create_makes_a_missing_directory_private(short_tmp: Path) -> None:
    db = short_tmp / "new" / "deeper" / "r.db"
    with serving("--db", str(db), "--create", "--listen", f"unix://{short_tmp / 'r.sock'}"):
        assert db.exists()
    for directory in (db.parent, db.parent.parent):
        assert stat.S_IMODE(directory.stat().st_mode) == 0o700


def test_a_directory_under_the_default_data_directory_is_made_without_create(
    short_tmp: Path,
) -> None:
    env = {**NO_DEFAULTS, "XDG_DATA_HOME": str(short_tmp / "xdg")}
    data = short_tmp / "xdg" / "agent-recorder"
    with serving("--listen", f"unix://{short_tmp / 'a.sock'}", env=env) as default:
        assert f"(database {data / 'recorder.db'})" in default.first_line
    db = data / "project" / "r.db"
    with serving("--db", str(db), "--listen", f"unix://{short_tmp / 'b.sock'}", env=env):
        assert db.exists()
    for directory in (data, data / "project"):
        assert stat.S_IMODE(directory.stat().st_mode) == 0o700


OPEN_TCP = (
    "WARNING recorder_server.server: 127.0.0.1:0 accepts plaintext calls from every local "
    "user without a token: give --token-file (or listen on a Unix socket path)"
)


@pytest.mark.parametrize(
    ("listen", "token", "warnings"),
    [
        ("127.0.0.1:0", "", [OPEN_TCP]),
        ("127.0.0.1:0", "s3cret", []),
        ("unix", "", []),
    ],
)
def test_a_listener_open_to_every_local_user_is_warned_about(
    short_tmp: Path, listen: str, token: str, warnings: list[str]
) -> None:
    if listen == "unix":
        listen = f"unix://{short_tmp / 'r.sock'}"
    env = {"AGENT_RECORDER_TOKEN": token, "AGENT_RECORDER_TOKEN_FILE": ""}
    with serving("--db", str(short_tmp / "r.db"), "--listen", listen, env=env) as served:
        pass
    assert served.process.returncode == 0
    assert served.err.splitlines() == warnings


def test_one_listening_line(short_tmp: Path) -> None:
    sock = short_tmp / "r.sock"
    with serving("--db", str(short_tmp / "r.db"), "--listen", f"unix://{sock}") as served:
        pass
    assert served.first_line == (
        f"agent-recorder listening on unix://{sock} (database {short_tmp / 'r.db'})\n"
    )
    assert (served.first_line + served.out + served.err).count("listening on") == 1
    assert served.out == "agent-recorder: stopping (draining writes)\n"
    assert served.err == ""
