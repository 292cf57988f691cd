"""memstage persist and free: one version of a file (the latest unless --version says), or the
latest of every file matched by a glob or below a directory (-r), drained to the PFS or taken out
of memory.

persist asks the manager to drain the version whatever the namespace's persist_every says (with
--wait, it waits until the version is on the PFS, with a progress bar on a terminal). free takes
the version out of memory once it is on the PFS (reads come from there); the manager refuses,
naming the path and version, while memory holds its only copy. Exit codes: 0 done, 2 a usage
error or a refusal (of a single file), 1 when some of several files could not be done or a drain
failed while waiting.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

from memstage.cli.files import expand, open_client
from memstage.errors import MemstageError, SettingError
from memstage.progress import Progress
from memstage.units import format_size, parse_duration


def _targets(client: Any, command: str, args: argparse.Namespace) -> list[str]:
    """The files the arguments name: globs matched, directories (with -r) walked."""
    files: list[str] = []
    for path, info in expand(client, command, args.paths).items():
        if info["type"] != "directory":
            files.append(path)
        elif not args.recursive:
            raise SettingError(f"{command}: {path} is a directory (give -r for every file below it)")
        else:
            files += sorted(p for p, e in client.find(path, detail=True).items() if e["type"] == "file")
    if args.version is not None and (len(files) != 1 or args.version <= 0):
        raise SettingError(f"{command}: --version picks a version (1 or more) of one file, not of {len(files)}"
                           if len(files) != 1 else f"{command}: --version must be 1 or more")
    return files


def _ask(client: Any, method: str, path: str, version: int) -> Any:
    from memstage.paths import normalize_file_path
    from memstage.proto import manager_pb2

    norm = normalize_file_path(path)
    return client.connections.call_manager(
        method, manager_pb2.LookupRequest(namespace=client.namespace, path=norm, version=version), norm)


def _each(command: str, files: list[str], act: Any) -> int:
    """act(path) on each file; one file's refusal is the command's (exit 2), of several each is told
    and the others go on (exit 1)."""
    failed = 0
    for path in files:
        try:
            act(path)
        except MemstageError as e:
            if len(files) == 1:
                raise
            failed += 1
            print(f"memstage {command}: error: {e}", file=sys.stderr)
    return 1 if failed else 0


def cmd_persist(args: argparse.Namespace) -> int:
    timeout = None
    if args.timeout is not None:
        try:
            timeout = parse_duration(args.timeout)
        except ValueError as e:
            raise SettingError(f"--timeout: {e}") from None
    client = open_client(args)
    asked: dict[str, Any] = {}  # path -> the version asked, as the manager replied

    def persist(path: str) -> None:
        info = _ask(client, "Persist", path, args.version or 0)
        asked[path] = info
        state = "on the PFS already" if info.persisted else "queued for the PFS"
        print(f"{path} version {info.version}: {state}")

    try:
        code = _each("persist", _targets(client, "persist", args), persist)
        if args.wait and asked:
            code = max(code, _wait(client, asked, timeout))
    finally:
        client.close()
    return code


def _wait(client: Any, asked: dict[str, Any], timeout: float | None) -> int:
    """Poll the versions asked until each is on the PFS, lost, or refused by the PFS (told); a bar
    of the bytes persisted on a terminal."""
    deadline = None if timeout is None else time.monotonic() + timeout
    total = sum(v.size for v in asked.values())
    waiting = {p: v for p, v in asked.items() if not v.persisted}
    done = total - sum(v.size for v in waiting.values())
    shown = Progress("persisted", sys.stderr)
    failed = 0
    pause = 0.05
    try:
        while waiting:
            shown.bytes(done, total, (len(asked) - len(waiting), len(asked)))
            for path, asked_info in list(waiting.items()):
                now = next((v for v in client.versions(path) if v["version"] == asked_info.version), None)
                why = ("it was deleted" if now is None else f"lost: {now['lost_reason']}" if now["lost"]
                       else f"the PFS refuses it: {now['drain_error']}" if now["drain_error"] else "")
                if now is not None and now["persisted"]:
                    done += asked_info.size
                    del waiting[path]
                elif why:
                    failed += 1
                    del waiting[path]
                    print(f"memstage persist: {path} version {asked_info.version}: not persisted ({why})",
                          file=sys.stderr)
            if waiting and deadline is not None and time.monotonic() > deadline:
                left = ", ".join(f"{p} version {v.version}" for p, v in waiting.items())
                raise MemstageError(f"timed out: not yet on the PFS: {left}")
            if waiting:
                time.sleep(pause)  # drains are reported a batch at a time: asked again until done
                pause = min(pause * 2, 1.0)
        shown.bytes(done, total, (len(asked) - failed, len(asked)))
    finally:
        shown.end()
    print(f"persisted {len(asked) - failed} of {len(asked)} versions ({format_size(done)}) on the PFS")
    return 1 if failed else 0


def cmd_free(args: argparse.Namespace) -> int:
    client = open_client(args)

    def free(path: str) -> None:
        info = _ask(client, "Free", path, args.version or 0)
        print(f"{path} version {info.version}: out of memory, read from the PFS")

    try:
        return _each("free", _targets(client, "free", args), free)
    finally:
        client.close()
