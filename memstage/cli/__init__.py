"""The `memstage` command line: main.py runs it, parser.py parses it, roles.py, admin.py and data.py
hold the subcommands, up.py the embedded deployment."""

from memstage.cli.main import main

__all__ = ["main"]
