"""The `memstage` command: one subcommand per role, plus status, up and bench.

The argparse tree is in parser.py; the commands are in roles.py (manager, benefactor, mount, up,
bench), admin.py (status, wait, policy, gc, checkpoints, token, certs), data.py (prefetch,
restore), files.py (ls, cat, cp, mv, rm, stat, versions) and keep.py (persist, free). A usage
error prints one line and exits 2, as does a MemstageError; no traceback.
"""

from __future__ import annotations

import os

# gRPC's C core prints its own copy of errors we already report in one line (e.g. a port in use);
# it must be told before grpc is first imported. GRPC_VERBOSITY=error brings its messages back.
os.environ.setdefault("GRPC_VERBOSITY", "NONE")

import logging  # noqa: E402
import sys  # noqa: E402
from collections.abc import Sequence  # noqa: E402

from memstage.cli.admin import status_json  # noqa: E402
from memstage.cli.common import LOG_FORMAT  # noqa: E402
from memstage.cli.parser import build_parser  # noqa: E402
from memstage.errors import MemstageError  # noqa: E402

__all__ = ["build_parser", "main", "status_json"]


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr, format=LOG_FORMAT)
    try:
        code = int(args.func(args) or 0)
        sys.stdout.flush()  # here, where a closed pipe is caught below, not at exit
        return code
    except MemstageError as e:
        print(f"memstage {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `memstage restore --list | head`: the reader has what it wanted
        # Python would report the pipe again when it flushes stdout at exit: point it at nothing.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141  # as a shell reports a command a closed pipe stopped (128 + SIGPIPE)
