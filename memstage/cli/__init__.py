"""The `memstage` command line: subcommands in main.py, the embedded deployment in up.py."""

from memstage.cli.main import main

__all__ = ["main"]
