"""Checks of `serve`'s settings before anything is opened: each failure is one line.

They only look (stat, access): nothing is created here, so a refused start leaves
no directory or file behind.
"""

from __future__ import annotations

import os
from pathlib import Path

from recorder_common.defaults import data_dir
from recorder_server.ownership import StartupError

# Kernel interfaces, not filesystems: a database there cannot work.
VIRTUAL_ROOTS = (Path("/proc"), Path("/sys"))
MAX_PORT = 65535


def _within(path: Path, root: Path) -> bool:
    return path == root or root in path.parents


def _nearest_existing(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def resolve_database(given: Path, *, create: bool) -> Path:
    """The real path of the database file, after checking its directory can hold it.

    A missing directory is made (later, 0700) only under the default data directory
    or with `create`: elsewhere it is more likely a typo than a wish.
    """
    real = Path(os.path.realpath(given))
    for root in VIRTUAL_ROOTS:
        if _within(real, root):
            raise StartupError(f"--db {given} is on {root}, which cannot hold a database")
    if real.is_dir():
        raise StartupError(f"--db {given} is a directory: name a database file in it")
    directory = real.parent
    existing = _nearest_existing(directory)
    if not existing.is_dir():
        raise StartupError(f"--db {given}: {existing} is not a directory")
    if existing != directory and not create:
        default = Path(os.path.realpath(data_dir()))
        if not _within(directory, default):
            raise StartupError(
                f"--db {given}: directory {directory} does not exist "
                "(check the path, or give --create to make it)"
            )
    if not os.access(existing, os.W_OK | os.X_OK):
        raise StartupError(f"--db {given}: directory {existing} is read-only")
    if real.exists() and not os.access(real, os.R_OK | os.W_OK):
        raise StartupError(f"--db {given}: database {real} is read-only")
    return real


def split_port(address: str) -> tuple[str, int]:
    """The host and port of a `host:port` listen address, the port checked for range."""
    host, colon, port_text = address.rpartition(":")
    if not colon or not host:
        raise StartupError(f"--listen {address}: give host:port, or unix:///path/to.sock")
    if not port_text.isdigit() or int(port_text) > MAX_PORT:
        raise StartupError(f"--listen {address}: port {port_text!r} is not a number 0-{MAX_PORT}")
    return host.removeprefix("[").removesuffix("]"), int(port_text)
