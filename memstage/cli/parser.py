"""The argparse tree of the `memstage` command. Flags are generated from the settings dataclasses
(memstage.settings), so --help, MEMSTAGE_* variables and TOML keys always agree."""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Sequence

from memstage import __version__
from memstage.cli.admin import (
    cmd_certs,
    cmd_checkpoint,
    cmd_checkpoints,
    cmd_gc,
    cmd_health,
    cmd_policy,
    cmd_status,
    cmd_token,
    cmd_wait,
)
from memstage.cli.common import TLS_FLAGS
from memstage.cli.data import cmd_prefetch, cmd_restore
from memstage.cli.files import cmd_cat, cmd_cp, cmd_ls, cmd_mv, cmd_rm, cmd_stat, cmd_versions
from memstage.cli.keep import cmd_free, cmd_persist
from memstage.cli.roles import cmd_bench, cmd_benefactor, cmd_manager, cmd_mount, cmd_umount, cmd_up
from memstage.settings import BenefactorSettings, ClientSettings, ManagerSettings, UpSettings, env_name, flag_name


def _shown(default: object, parse: object) -> str:
    """A default as a user would write it: sizes and durations in the largest unit that shows them
    whole (1GiB, 30s, 10min, 500ms), as the settings take them; other numbers without a trailing .0."""
    from memstage.settings import _duration, _float, _size

    if default == "":
        return "none"
    if parse is _size and isinstance(default, int) and default:
        for unit, factor in (("TiB", 1 << 40), ("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
            if default % factor == 0:
                return f"{default // factor}{unit}"
    if parse is _duration and isinstance(default, float):
        for unit, scale in (("h", 3600.0), ("min", 60.0), ("s", 1.0)):
            if default >= scale and default % scale == 0:
                return f"{default / scale:g}{unit}"
        return f"{default * 1000:g}ms" if 0 < default < 1 else f"{default:g}s"
    if parse is _float and isinstance(default, float):
        return f"{default:g}"
    return str(default)


def add_settings(parser: argparse.ArgumentParser, cls: type, only: Sequence[str] | None = None) -> None:
    for f in dataclasses.fields(cls):
        if only is not None and f.name not in only:
            continue
        default = _shown(f.default, f.metadata["parse"])
        if f.type in (bool, "bool") and f.default is True:  # on unless switched off: --no-unix-sockets
            parser.add_argument("--no-" + flag_name(f.name)[2:], dest=f.name, default=None, action="store_const",
                                const=False,
                                help=f"turns off (on by default): {f.metadata['help']} [{env_name(f.name)}=0]")
            continue
        if f.type in (bool, "bool"):  # a switch: --insecure
            parser.add_argument(flag_name(f.name), dest=f.name, default=None, action="store_const", const=True,
                                help=f"{f.metadata['help']} [{env_name(f.name)}=1]")
            continue
        parser.add_argument(flag_name(f.name), dest=f.name, default=None, metavar=f.name.upper(),
                            help=f"{f.metadata['help']} [{env_name(f.name)}; default {default}]")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="memstage",
        description="Checkpoint staging in the aggregate memory of many processes, drained to the PFS.",
    )
    parser.add_argument("--version", action="version", version=f"memstage {__version__}")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", metavar="FILE", help="TOML settings file [MEMSTAGE_CONFIG]")
    common.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"],
                        help="log verbosity (default info)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser("up", parents=[common], help="a manager and N benefactors on this machine, in the foreground",
                       description="Start a manager and N benefactors on this machine. Ctrl-C stops them all.")
    add_settings(p, UpSettings)
    p.set_defaults(func=cmd_up)

    p = sub.add_parser("manager", parents=[common], help="run the manager",
                       description="Run the manager: benefactor registry, striping maps, namespace, versions.")
    add_settings(p, ManagerSettings)
    p.set_defaults(func=cmd_manager)

    p = sub.add_parser("benefactor", parents=[common], help="run a benefactor donating memory",
                       description="Run a benefactor: donate memory to the staging area and serve chunks.")
    add_settings(p, BenefactorSettings)
    p.set_defaults(func=cmd_benefactor)

    p = sub.add_parser("status", parents=[common], help="benefactors, memory and files of a deployment",
                       description="Show benefactors (alive, memory used/capacity, drain backlog) and namespaces.")
    add_settings(p, ClientSettings, only=["manager", "token", *TLS_FLAGS])
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("health", parents=[common], help="ask a manager or benefactor whether it serves",
                       description="Ask the gRPC health service (grpc.health.v1) of a manager or benefactor at "
                                   "ADDRESS whether it serves, with the TLS settings given: prints SERVING and exits "
                                   "0, else exits 1. The Helm chart's probes run it in the pod: Kubernetes' own gRPC "
                                   "probe cannot present a certificate. No token is needed.")
    add_settings(p, ClientSettings, only=[*TLS_FLAGS])
    p.add_argument("address", metavar="ADDRESS", help="HOST:PORT of the role's gRPC port")
    p.add_argument("--timeout", default="5s", help="give up after this long (default 5s)")
    p.set_defaults(func=cmd_health)

    p = sub.add_parser("policy", parents=[common], help="show or set a namespace's persistence policy",
                       description="Show the policy of a namespace; with --persist-every or --keep-versions, set it.")
    add_settings(p, ClientSettings, only=["manager", "namespace", "token", *TLS_FLAGS])
    p.add_argument("--persist-every", type=int, default=None, metavar="N",
                   help="drain the first and every N-th checkpoint to the PFS; 0 = never (a checkpoint: a "
                        "per-step directory such as step_100/, files named ..._step100..., or a version of "
                        "any other file)")
    p.add_argument("--keep-versions", "--keep", type=int, default=None, metavar="K",
                   help="checkpoints kept readable in memory besides one being written (older ones: PFS only, "
                        "or deleted)")
    p.add_argument("--redundancy", default=None, metavar="POLICY",
                   help="none; replicate:R: R copies of each chunk on distinct benefactors (R-1 may fail); or "
                        "rs:K+M: stripes of K chunks and M parity chunks on distinct benefactors (M may fail)")
    p.add_argument("--pfs-keep", type=int, default=None, metavar="K",
                   help="persisted checkpoints kept on the PFS (older ones are removed from it); 0 = all")
    p.add_argument("--quota-memory", default=None, metavar="SIZE",
                   help="memory the namespace may use, committed and uncommitted (e.g. 8GiB); 0 = no limit "
                        "(admin token)")
    p.add_argument("--keep-deleted", choices=["yes", "no"], default=None,
                   help="yes: a deleted file's drained copy stays on the PFS (restore and gc still see it); "
                        "no (the default): it is removed with the file")
    p.add_argument("--quota-sessions", type=int, default=None, metavar="N",
                   help="write sessions (files being written) it may have open at once; 0 = no limit (admin)")
    p.set_defaults(func=cmd_policy)

    p = sub.add_parser("gc", parents=[common], help="remove drained files no version references from the PFS",
                       description="Remove from the PFS the chunk files of a namespace that no version the "
                                   "manager knows references (left by a crash, by deletes while the manager had "
                                   "no pfs setting, or by a deployment whose state was lost), and temporary files "
                                   "of drains that did not finish. Files another deployment is writing into the "
                                   "same directory now are left alone. Needs the manager's pfs setting.")
    add_settings(p, ClientSettings, only=["manager", "namespace", "token", *TLS_FLAGS])
    p.add_argument("--dry-run", action="store_true", help="list what would be removed, remove nothing")
    p.set_defaults(func=cmd_gc)

    p = sub.add_parser("checkpoints", parents=[common], help="list a namespace's checkpoints and their state",
                       description="List the checkpoints of a namespace (per-step directories and step-numbered "
                                   "files), oldest first: files, bytes, whether persist_every selects them, and "
                                   "their state (in_memory; protected: in memory with the redundancy its policy "
                                   "asks; draining; persisted; lost).")
    add_settings(p, ClientSettings, only=["manager", "namespace", "token", *TLS_FLAGS])
    p.add_argument("--json", action="store_true", help="print one JSON list")
    p.set_defaults(func=cmd_checkpoints)

    p = sub.add_parser("checkpoint", parents=[common], help="begin or end a checkpoint of a namespace",
                       description="Files any writer commits in the namespace between `begin STEP` and `end` "
                                   "(through the mount, the library or other processes) form checkpoint STEP, "
                                   "whatever their names: persist_every, keep and pfs_keep count it as one. For "
                                   "layouts memstage does not recognise itself (per-step directories such as "
                                   "step_100/ and step-numbered files need nothing); a path naming a step keeps it. "
                                   "A begin ends the checkpoint that was open.")
    add_settings(p, ClientSettings, only=["manager", "namespace", "token", *TLS_FLAGS])
    p.add_argument("action", choices=["begin", "end"], help="begin STEP, or end the open checkpoint")
    p.add_argument("step", type=int, nargs="?", default=None, metavar="STEP", help="the checkpoint's step (begin)")
    p.set_defaults(func=cmd_checkpoint)

    p = sub.add_parser("prefetch", parents=[common], help="load persisted files back into memory from the PFS",
                       description="Load the latest version of every file at or below PATH (a file, a checkpoint "
                                   "directory, or / for the whole namespace) back into memory from the PFS, so a "
                                   "restarted job reads it at memory speed: a checkpoint an earlier job drained, "
                                   "or one that left memory. The benefactors read the chunk files in parallel; "
                                   "what cannot be loaded (no room) is still read from the PFS. Exit code 1 then.")
    add_settings(p, ClientSettings, only=["manager", "namespace", "token", *TLS_FLAGS])
    p.add_argument("path", metavar="PATH", nargs="?", default="/",
                   help="a file or directory of the namespace (default: /)")
    p.add_argument("--latest", action="store_true",
                   help="only the newest persisted checkpoint of each step series below PATH (what a restart "
                        "reads), not every file")
    p.add_argument("--timeout", type=float, default=None, metavar="SECONDS",
                   help="give up after this long (default: wait until done)")
    p.set_defaults(func=cmd_prefetch)

    files = [("ls", cmd_ls, "list directories of a namespace"), ("cat", cmd_cat, "write files to standard output"),
             ("cp", cmd_cp, "copy files into or out of a namespace"), ("mv", cmd_mv, "rename a file or directory"),
             ("rm", cmd_rm, "remove files (and, with -r, directories)"), ("stat", cmd_stat, "what is kept of paths"),
             ("versions", cmd_versions, "the versions of a file"),
             ("persist", cmd_persist, "drain versions to the PFS, whatever the policy says"),
             ("free", cmd_free, "take versions that are on the PFS out of memory")]
    globs = " PATH may be a glob in quotes ('/ckpt/step-*'); one that matches nothing is a usage error."
    for name, func, summary in files:
        p = sub.add_parser(name, parents=[common], help=summary,
                           description=f"{summary[0].upper()}{summary[1:]} (paths as on the mount, /run/x.bin, "
                                       f"or ms:/run/x.bin).{'' if name in ('mv', 'versions') else globs} "
                                       "Exit code 2 for a usage error or what the manager refused, 1 when some "
                                       "of several files could not be done.")
        add_settings(p, ClientSettings, only=["manager", "namespace", "token", *TLS_FLAGS])
        p.set_defaults(func=func)
        if name == "ls":
            p.add_argument("paths", metavar="PATH", nargs="*", default=["/"], help="(default: /)")
        if name in ("cat", "rm", "stat", "persist", "free"):
            p.add_argument("paths", metavar="PATH", nargs="+")
        if name == "versions":
            p.add_argument("path", metavar="PATH")
        if name in ("ls", "stat", "versions"):
            p.add_argument("--json", action="store_true", help="print JSON")
        if name == "ls":
            p.add_argument("-l", "--long", action="store_true", help="with type, size, versions and mtime")
        if name in ("cat", "persist", "free"):
            p.add_argument("--version", type=int, default=None, metavar="N",
                           help="this version of the file (default: the latest)")
        if name == "cp":
            p.add_argument("paths", metavar="SRC... DST", nargs="+",
                           help="ms:/PATH in memstage, or a local path; with several sources, DST is a directory")
        if name == "mv":
            p.add_argument("src", metavar="SRC", help="PATH")
            p.add_argument("dst", metavar="DST", help="PATH")
        if name in ("cp", "rm", "persist", "free"):
            p.add_argument("-r", "--recursive", action="store_true",
                           help="whole directories" if name in ("cp", "rm") else "every file below a directory")
        if name == "persist":
            p.add_argument("--wait", action="store_true",
                           help="wait until the versions are on the PFS (a progress bar on a terminal)")
            p.add_argument("--timeout", default=None, metavar="DURATION",
                           help="with --wait: give up after this long (default: wait until done)")

    p = sub.add_parser("certs", parents=[common], help="make a CA and certificates for a deployment's TLS",
                       description="Write ca.pem, cert.pem and key.pem (0600), client.pem and client-key.pem (0600) "
                                   "into DIRECTORY, unless they are there already. cert.pem is the roles' identity "
                                   "(the manager and benefactors serve with it and dial each other with it): give "
                                   "it to them only. client.pem is for clients (applications, mounts, the CLI): its "
                                   "key usage is client authentication only, so a client cannot pose as a server. "
                                   "Both name 'memstage' (and 127.0.0.1, localhost, this host): "
                                   "tls_server_name=memstage. Prints the roles' settings as environment variables "
                                   "(with --client, the clients').")
    p.add_argument("directory")
    p.add_argument("--client", action="store_true", help="print the client certificate's settings")
    p.set_defaults(func=cmd_certs)

    p = sub.add_parser("token", parents=[common], help="create, revoke or list access tokens (admin token needed)",
                       description="Tokens give clients read or read-write access to named namespaces (or admin "
                                   "access to all). The manager keeps only a hash of each; a new token is printed "
                                   "once.")
    p.add_argument("action", choices=["create", "revoke", "list"])
    p.add_argument("id", nargs="?", default="", help="revoke: the token's id (as `memstage token list` shows it)")
    p.add_argument("--namespace", action="append", default=[], metavar="NS",
                   help="create: a namespace the token grants (repeat for several)")
    p.add_argument("--read-only", action="store_true", help="create: read access only")
    p.add_argument("--admin", action="store_true", help="create: an admin token (every namespace, tokens, policy)")
    p.add_argument("--note", default="", help="create: who or what the token is for")
    add_settings(p, ClientSettings, only=["manager", "token", *TLS_FLAGS])
    p.set_defaults(func=cmd_token)

    p = sub.add_parser("mount", parents=[common], help="mount a namespace as a staging directory (FUSE)",
                       description="Mount a namespace as a POSIX directory: files written there are checkpoints in "
                                   "memstage. Runs in the foreground; Ctrl-C or SIGTERM unmounts cleanly.")
    p.add_argument("mountpoint", metavar="MOUNTPOINT", help="an existing empty directory")
    add_settings(p, ClientSettings)
    p.add_argument("--background", action="store_true",
                   help="detach once mounted (exits 0 when the mount is usable, 2 with the reason if not)")
    p.add_argument("--log-file", metavar="PATH", default=None,
                   help="write the mount's log here (default: the terminal; with --background, "
                        "$XDG_RUNTIME_DIR or /tmp/memstage-mount.<mountpoint>.log)")
    p.add_argument("--nonempty", action="store_true",
                   help="mount over a directory that has files in it (they are hidden while mounted)")
    p.add_argument("--allow-other", action="store_true",
                   help="let other users use the mount, the kernel checking each file's mode and owner "
                        "(needs user_allow_other in /etc/fuse.conf unless run as root)")
    p.add_argument("--metrics-port", type=int, default=0, help="serve the client's /metrics here (0 = off)")
    p.set_defaults(func=cmd_mount)

    p = sub.add_parser("umount", parents=[common], help="unmount a staging directory",
                       description="Unmount a directory mounted with memstage mount.")
    p.add_argument("mountpoint", metavar="MOUNTPOINT")
    p.set_defaults(func=cmd_umount)

    p = sub.add_parser("wait", parents=[common], help="wait for benefactors to be up or for the drain to finish",
                       description="Wait until N benefactors are alive and/or nothing is left to drain to the PFS "
                                   "(e.g. at the end of a batch job). Exit 0 when done, 2 on timeout, 3 if a version "
                                   "was lost before it could be drained.")
    add_settings(p, ClientSettings, only=["manager", "token", *TLS_FLAGS])
    p.add_argument("--benefactors", type=int, default=None, metavar="N", help="wait until N benefactors are alive")
    p.add_argument("--drained", action="store_true", help="wait until every selected version is on the PFS")
    p.add_argument("--timeout", default="1h", help="give up after this long (default 1h)")
    p.set_defaults(func=cmd_wait)

    p = sub.add_parser("restore", parents=[common], help="rebuild a file or a directory tree from the PFS alone",
                       description="Rebuild a persisted version of a file from the PFS alone (no manager, no "
                                   "database), verifying every chunk's hash. PATH may be a directory (or /): then "
                                   "every file below it is restored, each as its complete version committed last, "
                                   "into OUT with the same tree and the commit time as modification time; exit "
                                   "code 1 if some file could not be restored.")
    p.add_argument("--pfs", required=True, metavar="DIR", help="the PFS directory benefactors drain to")
    p.add_argument("--namespace", default=None, help="namespace of the file (default: default)")
    p.add_argument("path", metavar="PATH", nargs="?",
                   help="the file's path in its namespace, e.g. /run42/rank0.bin, or a directory, e.g. /run42 or /")
    p.add_argument("--version", type=int, default=None,
                   help="version to restore (default: the complete version committed last)")
    p.add_argument("--deployment", default=None,
                   help="the deployment that drained it, when several share the PFS directory (see --list)")
    p.add_argument("--list", action="store_true",
                   help="list what the PFS holds (namespaces, files, deployments, versions, complete or not)")
    p.add_argument("--out", metavar="OUT",
                   help="where to write the file; for a directory, the directory to restore into (created if missing)")
    p.add_argument("--workers", type=int, default=8, metavar="N",
                   help="for a directory: files restored in parallel (default 8)")
    p.set_defaults(func=cmd_restore)

    p = sub.add_parser("bench", parents=[common], help="measure OAB/ASB against disk and bare-gRPC baselines",
                       description="Write checkpoint files to a local deployment and compare with baselines "
                                   "measured in the same run.")
    from memstage.bench.run import add_arguments

    add_arguments(p)
    p.set_defaults(func=cmd_bench)
    return parser
