"""File commands on a namespace, without Python or a mount: ls, cat, cp, mv, rm, stat, versions.

A path of the namespace is written as on the mount (`/run42/step_10/rank0.bin`); for cp, the side
in memstage is marked `ms:` (`memstage cp ckpt.bin ms:/run42/ckpt.bin`, `memstage cp -r
ms:/run42 ./restore`). Exit codes: 0 done, 2 a usage error or what the manager refused (the
message names the path), 1 when some files of a tree could not be copied or removed.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
from typing import Any

from memstage.cli.common import client_flags, table
from memstage.errors import NotFound, SettingError
from memstage.progress import Progress
from memstage.units import format_size

REMOTE = "ms:"
BLOCK = 8 * 1024 * 1024


def _client(args: argparse.Namespace) -> Any:
    from memstage.client import Client

    return Client(**client_flags(args), config=args.config)


def _when(ns: int) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ns / 1e9)) if ns else "-"


def cmd_ls(args: argparse.Namespace) -> int:
    client = _client(args)
    try:
        entries = client.ls(args.path, detail=True)
    finally:
        client.close()
    if args.json:
        print(json.dumps(entries, indent=2, default=str))
        return 0
    if not args.long:
        for e in entries:
            print(e["name"].rsplit("/", 1)[-1] + ("/" if e["type"] == "directory" else ""))
        return 0
    rows = [("TYPE", "SIZE", "VERSIONS", "MODIFIED", "NAME")]
    for e in entries:
        rows.append((e["type"], format_size(int(e.get("size") or 0)) if e["type"] == "file" else "-",
                     str(e.get("versions", "-")) if e["type"] == "file" else "-", _when(e.get("mtime_ns", 0)),
                     e["name"].rsplit("/", 1)[-1] + ("/" if e["type"] == "directory" else "")))
    table(rows)
    return 0


def cmd_cat(args: argparse.Namespace) -> int:
    client = _client(args)
    out = sys.stdout.buffer
    try:
        for path in args.paths:
            with client.open(path, "rb", version=args.version) as f:
                while block := f.read(BLOCK):
                    out.write(block)
        out.flush()
    finally:
        client.close()
    return 0


def _remote(path: str) -> str | None:
    return path[len(REMOTE):] or "/" if path.startswith(REMOTE) else None


def _pairs(client: Any, src: str, dst: str, recursive: bool) -> list[tuple[str, str, int]]:
    """(source, destination, size) of each file a copy makes; one side in memstage."""
    rsrc, rdst = _remote(src), _remote(dst)
    if (rsrc is None) == (rdst is None):
        raise SettingError(f"cp: one side is in memstage, written {REMOTE}/PATH (got {src!r} and {dst!r})")
    if rsrc is not None:  # out of memstage
        info = client.info(rsrc)
        if info["type"] != "directory":
            target = os.path.join(dst, os.path.basename(rsrc)) if os.path.isdir(dst) else dst
            return [(rsrc, target, int(info.get("size") or 0))]
        if not recursive:
            raise SettingError(f"cp: {src} is a directory (give -r)")
        out = []
        for path, e in sorted(client.find(rsrc, detail=True).items()):
            if e["type"] == "file":
                out.append((path, os.path.join(dst, os.path.relpath(path, rsrc)), int(e.get("size") or 0)))
        return out
    assert rdst is not None
    if not os.path.exists(src):
        raise SettingError(f"cp: {src}: no such file or directory")
    if not os.path.isdir(src):
        try:
            is_dir = client.info(rdst)["type"] == "directory"
        except NotFound:
            is_dir = False
        target = rdst.rstrip("/") + "/" + os.path.basename(src) if is_dir or rdst.endswith("/") else rdst
        return [(src, target, os.path.getsize(src))]
    if not recursive:
        raise SettingError(f"cp: {src} is a directory (give -r)")
    out = []
    for root, _, names in os.walk(src):
        for name in sorted(names):
            local = os.path.join(root, name)
            out.append((local, rdst.rstrip("/") + "/" + os.path.relpath(local, src), os.path.getsize(local)))
    return out


def cmd_cp(args: argparse.Namespace) -> int:
    client = _client(args)
    shown = Progress("copied", sys.stderr)
    failed = 0
    try:
        pairs = _pairs(client, args.src, args.dst, args.recursive)
        total, done = sum(size for _, _, size in pairs), 0
        into = _remote(args.dst) is not None
        read_from, write_to = (open, client.open) if into else (client.open, open)
        for n, (src, dst, _) in enumerate(pairs):
            try:
                if not into:
                    os.makedirs(os.path.dirname(dst) or ".", exist_ok=True)
                with read_from(src, "rb") as r, write_to(dst, "wb") as w:
                    while block := r.read(BLOCK):
                        w.write(block)
                        done += len(block)
                        shown.bytes(done, total, (n, len(pairs)))
            except (OSError, NotFound) as e:
                if len(pairs) == 1:  # one file: its error is the command's (a local one named, no traceback)
                    raise e if isinstance(e, NotFound) else SettingError(f"cp: {e}") from None
                failed += 1
                print(f"memstage cp: {src}: {e}", file=sys.stderr)
    finally:
        shown.end()
        client.close()
    return 1 if failed else 0


def cmd_mv(args: argparse.Namespace) -> int:
    client = _client(args)
    try:
        client.mv(args.src, args.dst)
    finally:
        client.close()
    return 0


def cmd_rm(args: argparse.Namespace) -> int:
    client = _client(args)
    try:
        for path in args.paths:
            if client.info(path)["type"] == "directory":
                if not args.recursive:
                    raise SettingError(f"rm: {path} is a directory (give -r)")
                dirs = [p for p, e in client.find(path, withdirs=True, detail=True).items()
                        if e["type"] == "directory"]
                client.rm(path, recursive=True)
                for d in sorted({*dirs, path}, key=len, reverse=True):  # the explicit ones, deepest first
                    with contextlib.suppress(NotFound):  # it existed by its files only
                        client.rmdir(d)
            else:
                client.rm_file(path)
    finally:
        client.close()
    return 0


def cmd_stat(args: argparse.Namespace) -> int:
    client = _client(args)
    try:
        info = client.info(args.path)
    finally:
        client.close()
    if args.json:
        print(json.dumps(info, indent=2, default=str))
        return 0
    for key in ("name", "type", "size", "version", "versions", "mode", "uid", "gid", "nlink", "ino",
                "mtime_ns", "target"):
        if key in info and info[key] not in (None, ""):
            value = info[key]
            if key == "mode":
                value = oct(int(value))
            elif key == "mtime_ns":
                key, value = "modified", _when(int(value))
            print(f"{key}: {value}")
    return 0


def cmd_versions(args: argparse.Namespace) -> int:
    client = _client(args)
    try:
        versions = client.versions(args.path)
    finally:
        client.close()
    if args.json:
        print(json.dumps(versions, indent=2, default=str))
        return 0
    rows = [("VERSION", "SIZE", "COMMITTED", "IN MEMORY", "PERSISTED")]
    for v in versions:
        rows.append((str(v["version"]), format_size(int(v["size"])),
                     _when(int(float(v.get("committed_at") or 0) * 1e9)),
                     "yes" if v.get("in_memory") else "no", "yes" if v.get("persisted") else "no"))
    table(rows)
    return 0
