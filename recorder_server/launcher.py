"""The `agent-recorder` console script: the CLI if the `[server]` extra is installed.

A plain `pip install agent-recorder` is the client library alone, but it installs
this script too. Without the extra's packages the script still answers `--version`
and otherwise says what to install, instead of failing on an import deep inside.
Only the standard library is imported before that check.
"""

from __future__ import annotations

import re
import sys
from importlib import metadata

from recorder_common.version import __version__

DISTRIBUTION = "agent-recorder"
EXTRA = "server"
_EXTRA_MARKER = re.compile(r"""extra\s*==\s*["']server["']""")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


def server_requirements() -> list[str]:
    """The distributions the `[server]` extra names, read from the installed metadata."""
    try:
        requires = metadata.requires(DISTRIBUTION) or []
    except metadata.PackageNotFoundError:  # run from a source tree that was never installed
        return []
    names = []
    for requirement in requires:
        _, _, marker = requirement.partition(";")
        match = _NAME.match(requirement)
        if match is not None and _EXTRA_MARKER.search(marker):
            names.append(match.group(0))
    return names


def missing_server_packages() -> list[str]:
    missing = []
    for name in server_requirements():
        try:
            metadata.distribution(name)
        except metadata.PackageNotFoundError:
            missing.append(name)
    return missing


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    missing = missing_server_packages()
    if missing:
        if args[:1] in (["--version"], ["-V"]):
            print(f"agent-recorder {__version__} (client library only)")
            return 0
        print(
            f"agent-recorder: the sidecar and its commands need the [{EXTRA}] extra "
            f"(missing: {', '.join(missing)}).\n"
            f"  install it with: pip install 'agent-recorder[{EXTRA}]'",
            file=sys.stderr,
        )
        return 1
    from recorder_server.cli import main as cli_main

    return cli_main(args)


if __name__ == "__main__":  # `python -m recorder_server.launcher`, as autostart runs it
    sys.exit(main())
