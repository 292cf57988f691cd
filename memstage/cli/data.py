"""Commands on a namespace's data: prefetch (from the PFS back into memory) and restore (from
the PFS alone, without a manager)."""

from __future__ import annotations

import argparse
import os
import sys

from memstage.cli.common import client_flags, table
from memstage.errors import SettingError
from memstage.progress import Progress
from memstage.units import format_size


def cmd_prefetch(args: argparse.Namespace) -> int:
    from memstage.client import Client

    client = Client(**client_flags(args), config=args.config)
    shown = Progress("loaded", sys.stderr)
    try:
        done = client.prefetch(args.path, progress=lambda loaded, total: shown.bytes(loaded, total),
                               timeout=args.timeout, latest=args.latest)
    finally:
        shown.end()
        client.connections.close()
    what = f"the latest checkpoint below {args.path}" if args.latest else args.path
    print(f"prefetched {what}: {done['files']} files, {format_size(int(done['loaded_bytes']))} of "
          f"{format_size(int(done['bytes']))} in memory")
    if done["failed_chunks"]:
        print(f"{done['failed_chunks']} chunks could not be loaded ({done['error']}); they are read from the PFS",
              file=sys.stderr)
        return 1
    return 0


def cmd_restore(args: argparse.Namespace) -> int:
    import time

    from memstage.drainer.restore import is_tree, list_pfs, restore, restore_tree

    if args.version is not None and args.version <= 0:
        raise SettingError("--version: must be 1 or more")
    if args.workers <= 0:
        raise SettingError("--workers: must be 1 or more")
    if not os.path.isdir(args.pfs):
        raise SettingError(f"--pfs: {args.pfs}: no such directory")
    if args.list:
        namespace = args.namespace or ("default" if args.path else None)
        rows = [("NAMESPACE", "PATH", "DEPLOYMENT", "VERSION", "COMMITTED", "SIZE", "COMPLETE")]
        for v in list_pfs(args.pfs, namespace, args.path):
            when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(v.committed_ms / 1000)) if v.committed_ms else "-"
            rows.append((v.namespace, v.path, v.deployment or "-", str(v.version), when, format_size(v.size),
                         "yes" if v.complete else f"no ({v.chunks} of {v.count} chunks)"))
        table(rows)
        return 0
    if not args.path or not args.out:
        raise SettingError("restore: PATH and --out are required (or --list to see what the PFS holds)")
    namespace = args.namespace or "default"
    if is_tree(args.pfs, namespace, args.path):
        if args.version is not None or args.deployment is not None:
            raise SettingError(f"--version and --deployment pick a version of one file; {namespace}:{args.path} "
                               "is a directory, restored as each file's complete version committed last")
        shown = Progress("restored", sys.stderr)
        try:
            tree = restore_tree(args.pfs, namespace, args.path, args.out, args.workers,
                                lambda done, total, files, of: shown.bytes(done, total, (files, of)))
        finally:
            shown.end()
        for path, why in tree.failures:
            print(f"memstage restore: not restored: {namespace}:{path}: {why}", file=sys.stderr)
        print(f"restored {tree.files} of {tree.total_files} files ({format_size(tree.size)}) of "
              f"{namespace}:{args.path} to {args.out}" + (f", {len(tree.failures)} failed" if tree.failures else ""))
        return 1 if tree.failures else 0
    shown = Progress("restored", sys.stderr)
    try:
        result = restore(args.pfs, namespace, args.path, args.out, args.version or 0, args.deployment,
                         progress=shown.bytes)
    finally:
        shown.end()
    print(f"restored {namespace}:{args.path} version {result.version}"
          f"{f' of deployment {result.deployment}' if result.deployment else ''} ({format_size(result.size)}, "
          f"{result.chunks} chunks) to {args.out}")
    return 0
