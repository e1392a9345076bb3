"""One owner per database file and per listening address, and the private files they use.

A database file is claimed with an exclusive flock on the file itself, so every path
that names it (a symlink, `..`, a hard link, a bind mount) meets the same lock: the
kernel keeps flocks per inode. The `.lock` file beside its real path holds the
owner's pid for the refusal (and keeps out servers older than this check).

A Unix socket path is claimed with a lock file beside it. A socket file nobody holds
is connected to first: one that answers is never removed (its server is named by
SO_PEERCRED), only a stale one is. gRPC binds a private name in the same directory
and the public name is a hard link made once serving, because gRPC unlinks the path
it bound when it stops, whoever's socket is there by then; the public name is
removed only while it is still this server's inode.

Every file made here is created 0600 and every directory 0700, whatever the umask.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import socket
import stat
import struct
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)

PRIVATE_FILE = 0o600
PRIVATE_DIR = 0o700
# sun_path holds 108 bytes, the last one a NUL.
MAX_SOCKET_PATH = 107
# A socket that accepts nothing within this long still has a listener (a full backlog).
PROBE_TIMEOUT_S = 1.0


class StartupError(Exception):
    """Why the sidecar cannot start, in one line naming the path or value."""


class DatabaseInUse(StartupError):
    """Another server process owns the database file (rule 14)."""


class AddressInUse(StartupError):
    """Another process listens on the address or serves the socket."""


def make_private_dirs(directory: Path) -> None:
    """Create directory and its missing parents, each 0700 (chmod: the umask may narrow it)."""
    missing: list[Path] = []
    current = directory
    while not current.exists():
        missing.append(current)
        current = current.parent
    for path in reversed(missing):
        try:
            path.mkdir(mode=PRIVATE_DIR)
        except FileExistsError:
            continue
        except OSError as exc:
            raise StartupError(f"cannot create directory {path}: {exc.strerror}") from None
        os.chmod(path, PRIVATE_DIR)


def open_private(path: Path) -> int:
    """A read-write descriptor of path, created 0600 if it did not exist."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, PRIVATE_FILE)
    except FileExistsError:
        return os.open(path, os.O_RDWR | os.O_CLOEXEC)
    os.fchmod(fd, PRIVATE_FILE)
    return fd


def _lock_path(path: Path) -> Path:
    return path.with_name(path.name + ".lock")


def _try_lock(fd: int) -> bool:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def _write_pid(fd: int) -> None:
    os.ftruncate(fd, 0)
    os.pwrite(fd, str(os.getpid()).encode(), 0)


def _pid_in(path: Path) -> int | None:
    """The pid a lock file names, if it holds one."""
    try:
        text = path.read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError):
        return None
    return int(text) if text.isdigit() else None


def _flock_holder(fd: int) -> int | None:
    """The pid holding a write flock on fd's inode, from /proc/locks (device and inode)."""
    info = os.fstat(fd)
    key = f"{os.major(info.st_dev):02x}:{os.minor(info.st_dev):02x}:{info.st_ino}"
    try:
        lines = Path("/proc/locks").read_text(encoding="ascii").splitlines()
    except OSError:
        return None
    for line in lines:
        fields = line.split()
        if "->" not in fields and fields[1:2] == ["FLOCK"] and fields[3:6:2] == ["WRITE", key]:
            pid = int(fields[4])
            if pid > 0:
                return pid
    return None


def _pid_text(pid: int | None) -> str:
    return f"pid {pid}" if pid else "pid unknown"


@dataclass
class DatabaseClaim:
    """The held locks of one database file; release() when the store is closed."""

    path: Path
    _fds: list[int] = field(default_factory=list)

    def release(self) -> None:
        for fd in self._fds:
            os.close(fd)
        self._fds.clear()


def claim_database(real: Path) -> DatabaseClaim:
    """Lock the database file (created 0600 if new) at its real path, or refuse naming the owner."""
    claim = DatabaseClaim(real)
    try:
        for path in (real, _lock_path(real)):
            fd = open_private(path)
            claim._fds.append(fd)
            if not _try_lock(fd):
                holder = _flock_holder(fd) or _pid_in(_lock_path(real))
                raise DatabaseInUse(
                    f"database {real} is in use by another agent-recorder server "
                    f"({_pid_text(holder)})"
                )
        _write_pid(claim._fds[-1])
    except OSError as exc:
        claim.release()
        raise StartupError(f"cannot open database {real}: {exc.strerror}") from None
    except BaseException:
        claim.release()
        raise
    return claim


def loose_files(real: Path) -> list[Path]:
    """The database's files that group or others may read or write."""
    suffixes = ("", "-wal", "-shm", ".lock")
    paths = [real.with_name(real.name + suffix) for suffix in suffixes]
    return [path for path in paths if path.exists() and stat.S_IMODE(path.stat().st_mode) & 0o077]


# -- Unix sockets ---------------------------------------------------------------------


def _peer_pid(path: Path) -> int | None:
    """Who answers on the socket: its pid (0 if unknown), or None when nobody does."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.settimeout(PROBE_TIMEOUT_S)
        try:
            probe.connect(str(path))
        except (FileNotFoundError, ConnectionRefusedError):
            return None
        except TimeoutError:
            return 0
        except PermissionError:
            raise AddressInUse(f"socket {path} belongs to another user") from None
        creds = probe.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    pid: int = struct.unpack("3i", creds)[0]
    return pid


def _check_length(path: Path) -> None:
    if len(os.fsencode(path)) > MAX_SOCKET_PATH:
        raise StartupError(
            f"socket path {path} is longer than the {MAX_SOCKET_PATH} bytes a Unix socket allows"
        )


@dataclass
class SocketClaim:
    """A socket path this process may serve: bind `bind_path`, then publish()."""

    path: Path
    bind_path: Path
    _lock_fd: int
    _published: tuple[int, int] | None = None

    def publish(self) -> None:
        """Make the bound socket private and give it its public name."""
        os.chmod(self.bind_path, PRIVATE_FILE)
        try:
            os.link(self.bind_path, self.path)
        except FileExistsError:
            raise AddressInUse(
                f"socket {self.path} was created by another process while this one started"
            ) from None
        info = os.lstat(self.path)
        self._published = (info.st_dev, info.st_ino)
        os.unlink(self.bind_path)

    def release(self) -> None:
        """Remove the public name only while it is still this server's socket."""
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.bind_path)
        if self._published is not None:
            with contextlib.suppress(FileNotFoundError):
                info = os.lstat(self.path)
                if (info.st_dev, info.st_ino) == self._published:
                    os.unlink(self.path)
            self._published = None
        # Still held, so still this claim's file: no litter beside a chosen socket path.
        with contextlib.suppress(FileNotFoundError):
            os.unlink(_lock_path(self.path))
        os.close(self._lock_fd)


def claim_socket(path: Path) -> SocketClaim:
    """The socket path for this process, or AddressInUse naming who serves it."""
    bind_path = path.with_name(f".ar-{os.getpid()}.sock")
    for checked in (path, bind_path):
        _check_length(checked)
    make_private_dirs(path.parent)
    try:
        fd = open_private(_lock_path(path))
    except OSError as exc:
        raise StartupError(f"cannot create {_lock_path(path)}: {exc.strerror}") from None
    if not _try_lock(fd):
        os.close(fd)
        holder = _peer_pid(path) or _pid_in(_lock_path(path))
        raise AddressInUse(f"socket {path} is served by {_pid_text(holder)}")
    claim = SocketClaim(path, bind_path, fd)
    try:
        _remove_if_stale(path)
        _remove_dead_binds(path.parent)
        _write_pid(fd)
    except BaseException:
        claim.release()
        raise
    return claim


def _remove_if_stale(path: Path) -> None:
    """Remove a socket file nobody answers on; refuse one that answers, or a non-socket."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise StartupError(f"{path} exists and is not a socket: move it away or --listen elsewhere")
    holder = _peer_pid(path)
    if holder is not None:
        raise AddressInUse(f"socket {path} is served by {_pid_text(holder)}")
    log.info("removing the stale socket %s (nobody answers on it)", path)
    os.unlink(path)


def _remove_dead_binds(directory: Path) -> None:
    """Remove the bind names (`.ar-PID.sock`) of servers killed between bind and publish.

    Only this user's sockets, and only when their process no longer exists: a live
    server may be about to publish its own.
    """
    for leftover in directory.glob(".ar-*.sock"):
        pid = leftover.name.removeprefix(".ar-").removesuffix(".sock")
        try:
            info = os.lstat(leftover)
        except FileNotFoundError:
            continue
        mine = stat.S_ISSOCK(info.st_mode) and info.st_uid == os.getuid()
        if mine and pid.isdigit() and not _process_exists(int(pid)):
            log.info("removing %s, left by pid %s, which has exited", leftover, pid)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(leftover)


def _process_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's
    return True


def check_abstract_free(name: str, address: str) -> None:
    """Refuse an abstract socket name someone holds (the kernel never shares one)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        try:
            probe.bind("\0" + name)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise AddressInUse(f"address {address} is in use") from None
            raise StartupError(f"cannot listen on {address}: {exc.strerror}") from None


# -- TCP --------------------------------------------------------------------------------


def check_port_free(host: str, port: int, address: str) -> None:
    """Refuse a TCP address someone listens on (gRPC then binds it without SO_REUSEPORT)."""
    if port == 0:
        return
    try:
        candidates = socket.getaddrinfo(
            host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
    except socket.gaierror as exc:
        raise StartupError(f"cannot listen on {address}: {exc.strerror}") from None
    for family, kind, proto, _, sockaddr in candidates:
        with socket.socket(family, kind, proto) as probe:
            # As gRPC binds: a port left in TIME_WAIT is free, a listening one is not.
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind(sockaddr)
            except OSError as exc:
                if exc.errno == errno.EADDRINUSE:
                    raise AddressInUse(f"address {address} is in use") from None
                raise StartupError(f"cannot listen on {address}: {exc.strerror}") from None
