"""What the sidecar writes is private to its owner, whatever the umask.

Another local user is a real one: the probe runs as `nobody` (root drops to it),
as tests/test_security.py does for the socket.
"""

from __future__ import annotations

import os
import pwd
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from support.serving import append_one, serving
from support.users import run_probe

from recorder_server.server import RecorderServer, ServerConfig


def mode(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


@contextmanager
def umask(value: int) -> Iterator[None]:
    previous = os.umask(value)
    try:
        yield
    finally:
        os.umask(previous)


def database_files(db: Path) -> list[Path]:
    return [db.with_name(db.name + suffix) for suffix in ("", "-wal", "-shm", ".lock")]


async def test_files_are_0600_and_directories_0700_under_an_open_umask(short_tmp: Path) -> None:
    data = short_tmp / "data"
    db = data / "deep" / "r.db"
    sock = short_tmp / "run" / "r.sock"
    with umask(0):
        config = ServerConfig(db_path=db, listen=f"unix://{sock}", create_db_dir=True)
        async with RecorderServer(config) as server:
            assert await append_one(server.address, "s") == [0]
            assert {path: mode(path) for path in database_files(db)} == {
                path: 0o600 for path in database_files(db)
            }
            assert (mode(data), mode(data / "deep"), mode(sock.parent)) == (0o700,) * 3
            assert (mode(sock), mode(sock.with_name("r.sock.lock"))) == (0o600, 0o600)
            # Nothing else was written beside them.
            assert sorted(p.name for p in db.parent.iterdir()) == sorted(
                p.name for p in database_files(db)
            )


PROBE = """
import sqlite3, sys
for path in sys.argv[1:]:
    try:
        with open(path, "rb") as f:
            f.read(1)
    except OSError as e:
        print(path, type(e).__name__)
    else:
        print(path, "read")
try:
    sqlite3.connect(f"file:{sys.argv[1]}?mode=ro", uri=True).execute(
        "SELECT count(*) FROM events").fetchone()
except sqlite3.Error as e:
    print("sqlite3", type(e).__name__)
else:
    print("sqlite3", "read")
"""


def probe(paths: list[Path], *, as_user: pwd.struct_passwd | None) -> list[str]:
    return run_probe(PROBE, [str(path) for path in paths], as_user=as_user).splitlines()


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run a probe as another user")
async def test_another_local_user_cannot_read_the_recordings(short_tmp: Path) -> None:
    nobody = pwd.getpwnam("nobody")
    # The directory is one the sidecar did not make, open to all: the files' own
    # modes are what keeps the probe out.
    os.chmod(short_tmp, 0o755)
    db = short_tmp / "r.db"
    listen = f"unix://{short_tmp / 'r.sock'}"
    with serving("--db", str(db), "--listen", listen, preexec_fn=lambda: os.umask(0)) as served:
        assert await append_one(served.address, "s") == [0]
        files = database_files(db)
        assert all(path.exists() for path in files)
        assert probe(files, as_user=None) == [f"{path} read" for path in files] + ["sqlite3 read"]
        assert probe(files, as_user=nobody) == [f"{path} PermissionError" for path in files] + [
            "sqlite3 OperationalError"
        ]


def test_an_existing_database_open_to_others_gets_a_warning(short_tmp: Path) -> None:
    db = short_tmp / "r.db"
    listen = f"unix://{short_tmp / 'r.sock'}"
    with serving("--db", str(db), "--listen", listen) as first:
        pass
    assert first.err == ""
    db.chmod(0o644)
    with serving("--db", str(db), "--listen", listen) as second:
        pass
    assert second.err.splitlines() == [
        f"WARNING recorder_server.server: {db} can be read by other users: chmod 600 {db}"
    ]
    assert mode(db) == 0o644  # told, not changed behind the operator's back
