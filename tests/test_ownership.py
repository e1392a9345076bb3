"""One owner per address and per database file, with real processes, sockets and files.

A second `serve` is a real child process; the first is a child process too, or a
server in this process where the test needs to change things under it.
"""

from __future__ import annotations

import errno
import os
import pwd
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from support.serving import append_one, refusal, run_serve, serving

from recorder_server.server import RecorderServer, ServerConfig

# -- TCP ----------------------------------------------------------------------------


async def test_a_second_server_on_a_taken_port_is_refused_before_any_database(
    short_tmp: Path,
) -> None:
    with serving("--db", str(short_tmp / "a.db"), "--listen", "127.0.0.1:0") as first:
        other = short_tmp / "other" / "b.db"
        result = run_serve("--db", str(other), "--create", "--listen", first.address)
        assert refusal(result) == f"agent-recorder: address {first.address} is in use"
        assert not other.parent.exists()  # nothing touched, not even its directory
        assert await append_one(first.address, "s") == [0]


def test_the_port_is_not_shared_with_so_reuseport(short_tmp: Path) -> None:
    """The kernel itself refuses a second listener, even one that asks to share."""
    with serving("--db", str(short_tmp / "a.db"), "--listen", "127.0.0.1:0") as first:
        port = int(first.address.rsplit(":", 1)[1])
        with socket.socket() as sharer:
            sharer.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            with pytest.raises(OSError) as refused:
                sharer.bind(("127.0.0.1", port))
            assert refused.value.errno == errno.EADDRINUSE


async def test_a_second_server_on_a_taken_abstract_socket_is_refused(short_tmp: Path) -> None:
    address = f"unix-abstract:agent-recorder-test-{short_tmp.name}"
    with serving("--db", str(short_tmp / "a.db"), "--listen", address) as first:
        assert first.address == address
        result = run_serve("--db", str(short_tmp / "b.db"), "--listen", address)
        assert refusal(result) == f"agent-recorder: address {address} is in use"
        assert not (short_tmp / "b.db").exists()
        assert await append_one(address, "s") == [0]


# -- Unix sockets ---------------------------------------------------------------------


async def test_a_served_socket_is_never_replaced(short_tmp: Path) -> None:
    path = short_tmp / "r.sock"
    with serving("--db", str(short_tmp / "a.db"), "--listen", f"unix://{path}") as first:
        inode = path.stat().st_ino
        other = short_tmp / "b.db"
        result = run_serve("--db", str(other), "--listen", f"unix://{path}")
        assert refusal(result) == (
            f"agent-recorder: socket {path} is served by pid {first.process.pid}"
        )
        assert not other.exists()
        assert path.stat().st_ino == inode
        assert await append_one(first.address, "s") == [0]
        assert first.stop() == 0
    assert not path.exists()  # its owner removed it on the way out


LISTENER = """
import socket, sys
s = socket.socket(socket.AF_UNIX)
s.bind(sys.argv[1])
s.listen()
print("ready", flush=True)
sys.stdin.read()
"""


def test_a_socket_another_program_serves_is_left_alone(short_tmp: Path) -> None:
    path = short_tmp / "r.sock"
    with subprocess.Popen(
        [sys.executable, "-c", LISTENER, str(path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    ) as other:
        try:
            assert other.stdout is not None and other.stdout.readline() == "ready\n"
            result = run_serve("--db", str(short_tmp / "a.db"), "--listen", f"unix://{path}")
            assert refusal(result) == f"agent-recorder: socket {path} is served by pid {other.pid}"
            assert path.is_socket()
            assert not (short_tmp / "a.db").exists()
        finally:
            other.communicate("", timeout=30)


async def test_a_stale_socket_is_replaced(short_tmp: Path) -> None:
    path = short_tmp / "r.sock"
    with socket.socket(socket.AF_UNIX) as dead:
        dead.bind(str(path))  # bound, never listening, then closed: nobody answers
    with serving("--db", str(short_tmp / "a.db"), "--listen", f"unix://{path}") as served:
        assert await append_one(served.address, "s") == [0]
    assert served.process.returncode == 0
    assert f"removing the stale socket {path} (nobody answers on it)" in served.err


def test_bind_names_left_by_killed_servers_are_removed_and_live_ones_kept(
    short_tmp: Path,
) -> None:
    """A server killed between binding `.ar-PID.sock` and publishing it left that name;
    the next server beside it removes it, but not one a live process may publish."""
    exited = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    )
    dead_pid = int(exited.stdout)
    dead = short_tmp / f".ar-{dead_pid}.sock"
    not_a_socket = short_tmp / f".ar-{dead_pid + 1_000_000}.sock"
    not_a_socket.write_text("someone's notes")
    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        live = short_tmp / f".ar-{alive.pid}.sock"
        for leftover in (dead, live):
            with socket.socket(socket.AF_UNIX) as bound:
                bound.bind(str(leftover))
        path = short_tmp / "r.sock"
        with serving("--db", str(short_tmp / "a.db"), "--listen", f"unix://{path}") as served:
            kept = (dead.exists(), live.exists(), not_a_socket.exists(), path.is_socket())
            assert kept == (False, True, True, True)
        assert f"removing {dead}, left by pid {dead_pid}, which has exited" in served.err
    finally:
        alive.kill()
        alive.wait()


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to give a file to another user")
def test_another_user_s_bind_name_is_left_alone(short_tmp: Path) -> None:
    """Beside a socket in a shared directory, another user's leftover is not ours to remove
    (and removing it would fail in a sticky directory such as /tmp)."""
    theirs = short_tmp / ".ar-999999999.sock"  # no such pid
    with socket.socket(socket.AF_UNIX) as bound:
        bound.bind(str(theirs))
    nobody = pwd.getpwnam("nobody")
    os.chown(theirs, nobody.pw_uid, nobody.pw_gid)
    path = short_tmp / "r.sock"
    with serving("--db", str(short_tmp / "a.db"), "--listen", f"unix://{path}"):
        assert (theirs.is_socket(), path.is_socket()) == (True, True)


def test_a_file_that_is_not_a_socket_is_refused(short_tmp: Path) -> None:
    path = short_tmp / "notes.txt"
    path.write_text("mine")
    result = run_serve("--db", str(short_tmp / "a.db"), "--listen", f"unix://{path}")
    assert refusal(result) == (
        f"agent-recorder: {path} exists and is not a socket: move it away or --listen elsewhere"
    )
    assert path.read_text() == "mine"


async def test_a_stopping_server_removes_only_its_own_socket(short_tmp: Path) -> None:
    path = short_tmp / "r.sock"
    config = ServerConfig(db_path=short_tmp / "a.db", listen=f"unix://{path}")
    replacement = socket.socket(socket.AF_UNIX)
    try:
        async with RecorderServer(config):
            path.unlink()  # someone else's socket takes the name meanwhile
            replacement.bind(str(path))
            replacement.listen()
            inode = path.stat().st_ino
        assert path.stat().st_ino == inode
    finally:
        replacement.close()
    path.unlink()
    async with RecorderServer(config) as server:
        assert path.is_socket()
        assert await append_one(server.address, "s") == [0]
    assert not path.exists()
    assert not path.with_name("r.sock.lock").exists()


# -- one owner per database file ------------------------------------------------------


@pytest.mark.parametrize("name", ["symlink", "dotdot", "hardlink"])
def test_every_path_to_an_owned_database_is_refused(short_tmp: Path, name: str) -> None:
    real = short_tmp / "rec.db"
    with serving("--db", str(real), "--listen", f"unix://{short_tmp / 'a.sock'}") as first:
        (short_tmp / "sub").mkdir()
        if name == "symlink":
            other, named = short_tmp / "sub" / "link.db", real
            other.symlink_to(real)
        elif name == "dotdot":
            other, named = short_tmp / "sub" / ".." / "rec.db", real
        else:
            other = named = short_tmp / "sub" / "hard.db"
            os.link(real, other)
        result = run_serve("--db", str(other), "--listen", f"unix://{short_tmp / 'b.sock'}")
        assert refusal(result) == (
            f"agent-recorder: database {named} is in use by another agent-recorder "
            f"server (pid {first.process.pid})"
        )
        assert not (short_tmp / "b.sock").exists()


def test_a_bind_mounted_database_is_refused(short_tmp: Path) -> None:
    """The same file under another name on another mount: only device and inode tell."""
    if os.geteuid() != 0:
        pytest.skip("bind mounts need root")
    real, alias = short_tmp / "rec.db", short_tmp / "alias.db"
    with serving("--db", str(real), "--listen", f"unix://{short_tmp / 'a.sock'}") as first:
        alias.touch()
        mounted = subprocess.run(
            ["mount", "--bind", str(real), str(alias)], capture_output=True, text=True, check=False
        )
        if mounted.returncode != 0:
            pytest.skip(f"cannot bind-mount: {mounted.stderr.strip() or mounted.returncode}")
        try:
            assert os.path.realpath(alias) == str(alias)  # no path leads back to rec.db
            result = run_serve("--db", str(alias), "--listen", f"unix://{short_tmp / 'b.sock'}")
        finally:
            subprocess.run(["umount", str(alias)], check=False)
        assert refusal(result) == (
            f"agent-recorder: database {alias} is in use by another agent-recorder "
            f"server (pid {first.process.pid})"
        )
