"""A probe run as another local user (root drops to it), to try what that user can open."""

from __future__ import annotations

import os
import pwd
import subprocess

PROBE_TIMEOUT_S = 30


def run_probe(code: str, args: list[str], *, as_user: pwd.struct_passwd | None) -> str:
    """The stdout of `/usr/bin/python3 -c code args...`, as `as_user` (None: as this user).

    The system Python, not this venv: another user may not be able to enter its path.
    """

    def drop() -> None:
        assert as_user is not None
        os.setgroups([])
        os.setgid(as_user.pw_gid)
        os.setuid(as_user.pw_uid)

    result = subprocess.run(
        ["/usr/bin/python3", "-c", code, *args],
        preexec_fn=drop if as_user is not None else None,
        capture_output=True,
        text=True,
        timeout=PROBE_TIMEOUT_S,
        check=True,
    )
    return result.stdout
