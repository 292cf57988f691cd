"""What the command modules share: settings taken from flags, tables, the log format."""

from __future__ import annotations

import argparse
import dataclasses
import logging
from collections.abc import Sequence
from typing import Any

log = logging.getLogger("memstage")
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
TLS_FLAGS = ("tls_ca", "tls_cert", "tls_key", "tls_server_name")


def client_flags(args: argparse.Namespace) -> dict[str, Any]:
    """The client settings a manager-facing command takes from its flags (`token create` has a
    --namespace of its own: the namespaces a new token grants)."""
    names = ("manager", "namespace", "token", *TLS_FLAGS)
    return {n: getattr(args, n) for n in names if isinstance(getattr(args, n, None), str)}


def settings_flags(args: argparse.Namespace, cls: type) -> dict[str, Any]:
    return {f.name: getattr(args, f.name, None) for f in dataclasses.fields(cls)}


def table(rows: Sequence[Sequence[str]]) -> None:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())
