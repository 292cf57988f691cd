"""File commands on a namespace, without Python or a mount: ls, cat, cp, mv, rm, stat, versions
(persist and free are in memstage.cli.keep).

A path of the namespace is written as on the mount (`/run42/step_10/rank0.bin`), optionally
after `ms:`; for cp, the side in memstage is marked `ms:` (`memstage cp ckpt.bin ms:/run42/ckpt.bin`,
`memstage cp -r ms:/run42 ./restore`). Paths in memstage may be globs (`'ms:/ckpt/step-*'`,
quoted so the shell leaves them alone), matched by fsspec's glob; a glob matching nothing is a
usage error. Exit codes: 0 done, 2 a usage error or what the manager refused (the message names
the path), 1 when some files of several could not be copied, removed or shown.
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


def open_client(args: argparse.Namespace) -> Any:
    from memstage.client import Client

    return Client(**client_flags(args), config=args.config)


def _magic(path: str) -> bool:
    return any(c in path for c in "*?[")


def expand(client: Any, command: str, paths: list[str]) -> dict[str, dict[str, Any]]:
    """The paths of the namespace the arguments name (after an optional ms:), globs matched with
    fsspec's glob, each with its info, in the order given (a glob's matches sorted). A glob that
    matches nothing, or a path that does not exist, is a usage error naming it."""
    found: dict[str, dict[str, Any]] = {}
    for arg in paths:
        path = arg.removeprefix(REMOTE) or "/"
        if not _magic(path):
            found[path] = client.info(path)
            continue
        matched = client.glob(path, detail=True)
        if not matched:
            raise SettingError(f"{command}: no match for {arg}")
        found.update(sorted(matched.items()))
    return found


def _when(ns: int) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ns / 1e9)) if ns else "-"


def cmd_ls(args: argparse.Namespace) -> int:
    client = open_client(args)
    try:
        targets = expand(client, "ls", args.paths)
        files = [info for info in targets.values() if info["type"] != "directory"]
        listed = [(path, client.ls(path, detail=True)) for path, info in targets.items()
                  if info["type"] == "directory"]
    finally:
        client.close()
    if args.json:
        print(json.dumps(files + [e for _, entries in listed for e in entries], indent=2, default=str))
        return 0
    one_dir = len(targets) == 1 and not files  # as ls: a lone directory is listed without its name
    if files:
        _show(files, args.long, full=True)
    for n, (path, entries) in enumerate(listed):
        if not one_dir:
            print(f"{'' if n == 0 and not files else chr(10)}{path}:")
        _show(entries, args.long, full=False)
    return 0


def _show(entries: list[dict[str, Any]], long: bool, full: bool) -> None:
    """Entries by name (full: by path), or with -l as a table."""
    def name(e: dict[str, Any]) -> str:
        return (e["name"] if full else e["name"].rsplit("/", 1)[-1]) + ("/" if e["type"] == "directory" else "")

    if not long:
        for e in entries:
            print(name(e))
        return
    rows = [("TYPE", "SIZE", "VERSIONS", "MODIFIED", "NAME")]
    for e in entries:
        rows.append((e["type"], format_size(int(e.get("size") or 0)) if e["type"] == "file" else "-",
                     str(e.get("versions", "-")) if e["type"] == "file" else "-", _when(e.get("mtime_ns", 0)),
                     name(e)))
    table(rows)


def cmd_cat(args: argparse.Namespace) -> int:
    client = open_client(args)
    out = sys.stdout.buffer
    try:
        paths = list(expand(client, "cat", args.paths))
        if args.version is not None and len(paths) > 1:
            raise SettingError(f"cat: --version picks a version of one file, not of {len(paths)}")
        for path in paths:
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


def _plan(client: Any, srcs: list[str], dst: str, recursive: bool) -> list[tuple[str, str, int]]:
    """(source, destination, size) of each file a copy of several sources makes: globs in memstage
    matched, and with more than one source, each goes into the directory `dst` by its name."""
    sources: list[str] = []
    for src in srcs:
        sources += [REMOTE + p for p in expand(client, "cp", [src])] if _remote(src) and _magic(src) else [src]
    if len(sources) == 1:
        return _pairs(client, sources[0], dst, recursive)
    rdst = _remote(dst)
    if rdst is None:
        is_dir = os.path.isdir(dst)
    else:
        try:
            is_dir = client.info(rdst)["type"] == "directory"
        except NotFound:  # directories are implicit: it is made by the files copied into it
            is_dir = True
        dst = dst.rstrip("/") + "/"
    if not is_dir:
        raise SettingError(f"cp: {len(sources)} sources: {dst} is not a directory")
    pairs: list[tuple[str, str, int]] = []
    for src in sources:
        rsrc = _remote(src)
        tree = client.info(rsrc)["type"] == "directory" if rsrc is not None else os.path.isdir(src)
        name = os.path.basename((rsrc or src).rstrip("/"))
        pairs += _pairs(client, src, (dst + name if rdst is not None else os.path.join(dst, name)) if tree else dst,
                        recursive)
    return pairs


def cmd_cp(args: argparse.Namespace) -> int:
    if len(args.paths) < 2:
        raise SettingError("cp: give a source and a destination (SRC... DST)")
    srcs, dst = args.paths[:-1], args.paths[-1]
    client = open_client(args)
    shown = Progress("copied", sys.stderr)
    failed = 0
    try:
        pairs = _plan(client, srcs, dst, args.recursive)
        total, done = sum(size for _, _, size in pairs), 0
        into = _remote(dst) is not None
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
                shown.bytes(done, total, (n + 1, len(pairs)))  # this file counted as copied
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
    client = open_client(args)
    try:
        client.mv(args.src.removeprefix(REMOTE), args.dst.removeprefix(REMOTE))
    finally:
        client.close()
    return 0


def cmd_rm(args: argparse.Namespace) -> int:
    client = open_client(args)
    try:
        for path, info in expand(client, "rm", args.paths).items():
            if info["type"] == "directory":
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
    client = open_client(args)
    try:
        found = expand(client, "stat", args.paths)
    finally:
        client.close()
    infos = list(found.values())
    if args.json:  # one object for one path named, a list for a glob or several paths
        one = len(args.paths) == 1 and not _magic(args.paths[0])
        print(json.dumps(infos[0] if one else infos, indent=2, default=str))
        return 0
    for n, info in enumerate(infos):
        if n:
            print()
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
    client = open_client(args)
    try:
        versions = client.versions(args.path.removeprefix(REMOTE))
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
