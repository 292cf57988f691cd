"""Settings of every role: frozen dataclasses built once and passed in.

Each value comes from, in order: a command-line flag (or a keyword argument of Client), a
MEMSTAGE_<NAME> environment variable, a TOML file (`--config`, or MEMSTAGE_CONFIG) in the role's
table ([manager], [benefactor], [client], [up]), then the default. Sizes and durations are written
for humans ("4GiB", "30s"). A bad value raises SettingError naming where it came from.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from memstage.chunks import MAX_CHUNK_SIZE
from memstage.errors import SettingError
from memstage.paths import check_namespace
from memstage.redundancy import Redundancy
from memstage.rpc import check_address
from memstage.units import parse_duration, parse_size

GiB = 1024**3
MiB = 1024**2


def _int(v: Any) -> int:
    if isinstance(v, bool):
        raise ValueError(f"{v!r} is not a whole number")
    try:
        n = int(str(v), 10) if not isinstance(v, int) else v
    except ValueError:
        raise ValueError(f"{v!r} is not a whole number") from None
    if n < 0:
        raise ValueError(f"{v!r} is negative")
    return n


def _float(v: Any) -> float:
    if isinstance(v, bool):
        raise ValueError(f"{v!r} is not a number")
    try:
        x = float(v)
    except (TypeError, ValueError):
        raise ValueError(f"{v!r} is not a number") from None
    if not x >= 0 or x == float("inf"):
        raise ValueError(f"{v!r} is not a number of 0 or more")
    return x


def _str(v: Any) -> str:
    return str(v)


def _choice(*options: str) -> Callable[[Any], str]:
    def parse(v: Any) -> str:
        if str(v) not in options:
            raise ValueError(f"{v!r} is not one of {', '.join(options)}")
        return str(v)

    return parse


def setting(default: Any, parse: Callable[[Any], Any], help: str) -> Any:
    return field(default=default, metadata={"parse": parse, "help": help})


def _bool(v: Any) -> bool:
    if isinstance(v, bool):
        return v
    text = str(v).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off", ""):
        return False
    raise ValueError(f"{v!r} is not true or false")


def _size(v: Any) -> int:
    return parse_size(v)


def _duration(v: Any) -> float:
    return parse_duration(v)


def _redundancy(v: Any) -> str:
    try:
        return str(Redundancy.parse(str(v)))
    except SettingError as e:
        raise ValueError(str(e).split(": ", 1)[-1]) from None


@dataclass(frozen=True, slots=True)
class ManagerSettings:
    listen: str = setting("127.0.0.1:7070", _str, "HOST:PORT the manager serves gRPC on")
    state: str = setting("./memstage-state", _str, "directory of the manager's SQLite state")
    metrics_port: int = setting(0, _int, "port of /metrics (0 = off)")
    metrics_host: str = setting("", _str, "host /metrics binds to (default: the --listen host)")
    metrics_without_client_cert: bool = setting(False, _bool, "/metrics asks no client certificate even with "
                                                "tls_ca set: any scraper that trusts its certificate may read the "
                                                "deployment's series (those that name namespaces need metrics.pem)")
    heartbeat_interval: float = setting(30.0, _duration, "benefactor heartbeat period; dead after 3 missed")
    heartbeat_listen: str = setting("", _str, "HOST:PORT of the manager's heartbeat process, which answers "
                                    "heartbeats apart from everything else the manager does, so that a storm of "
                                    "commits never delays them (default: the --listen host, any free port; "
                                    "benefactors are told the port; off = answered by the manager itself)")
    heartbeat_rate: float = setting(1000.0, _float, "heartbeats per second the manager aims at: with more than "
                                    "heartbeat_interval x this many benefactors, their period (and the time to "
                                    "declare one dead) stretches to keep the load there (0 = never stretch)")
    metrics_benefactors: int = setting(256, _int, "per-benefactor /metrics series for at most this many (those with "
                                       "a stuck drain, the largest backlog, the most memory in use); the others are "
                                       "summed under benefactor=\"(others)\"")
    control_listen: str = setting("", _str, "HOST:PORT of the control port, which serves clients' calls (stat, "
                                  "create, rename, commit, ...) on plain sockets (TLS when the gRPC port has it) "
                                  "for clients with transport = stream (default: the --listen host, any free port; "
                                  "off = none)")
    socket_dir: str = setting("", _str, "directory (mode 700, this user's) for a Unix socket of the control port: "
                              "clients on this machine use it instead of TCP, with no encryption cost; only "
                              "processes of this user may connect (default: none)")
    stripe_width: int = setting(4, _int, "benefactors in a striping map")
    pfs: str = setting("", _str, "the PFS directory benefactors drain to, where the manager can read it: a new "
                       "state lists the versions and checkpoints earlier deployments drained there (read from the "
                       "PFS until prefetched); default: none")
    persist_every: int = setting(1, _int, "default policy: drain the first and every N-th checkpoint to the PFS "
                                          "(0 = never)")
    keep_versions: int = setting(2, _int, "default policy: checkpoints kept readable in memory besides the one "
                                          "being written")
    redundancy: str = setting("none", _redundancy, "default policy: none, replicate:R (R copies of each chunk "
                              "on distinct benefactors) or rs:K+M (stripes of K chunks and M Reed-Solomon parity "
                              "chunks), made right after each commit")
    policies: str = setting("", _str, "policies of named namespaces, applied at every start, as JSON: "
                            "{\"NS\": {\"quota_memory\": \"8GiB\", \"quota_sessions\": 16, \"persist_every\": 3, "
                            "\"keep_versions\": 2, \"pfs_keep\": 5, \"redundancy\": \"rs:4+2\", "
                            "\"keep_deleted\": false}} (memstage policy changes them until the next start)")
    session_lease: float = setting(30.0, _duration, "a write session not renewed for this long ends and its "
                                   "uncommitted chunks are freed (writers renew every third of it)")
    sync_interval: float = setting(0.0, _duration, "0: a change is acknowledged once the manager's state on disk "
                                   "survives a power cut of its node (one fsync per change, shared by concurrent "
                                   "ones); > 0: once it survives a crash of the manager, with an fsync this often "
                                   "(memstage up uses 1s: there a power cut takes every benefactor's memory too)")
    cache_lease: float = setting(2.0, _duration, "mounts cache attributes and names for at most half of this "
                                 "after their last word with the manager; a change waits (at most this long) until "
                                 "every other mount of the namespace dropped what it cached of it")
    insecure: bool = setting(False, _bool, "no authentication: whoever reaches the port may do anything (without "
                             "it, clients need a token and benefactors the cluster secret, both kept in --secrets)")
    secrets: str = setting("", _str, "private directory of the cluster secret (cluster.key) and of the first admin "
                           "token (admin.token), created on the first start (default: <state>/secrets)")
    cluster_secret: str = setting("", _str, "file holding the cluster secret, when it is given (e.g. a Kubernetes "
                                  "Secret) rather than created in --secrets")
    tls_cert: str = setting("", _str, "PEM certificate this role serves gRPC with (and presents as a client)")
    tls_key: str = setting("", _str, "PEM private key of tls_cert")
    tls_ca: str = setting("", _str, "PEM CA that peers' certificates must be signed by (as a server: clients "
                          "must present one, mutual TLS)")
    tls_server_name: str = setting("", _str, "name the peers' certificates are checked against (default: the host "
                                   "dialled)")

    def validate(self) -> None:
        check_address(self.listen, "listen")
        if self.heartbeat_listen not in ("", "off"):
            check_address(self.heartbeat_listen, "heartbeat_listen")
        if self.control_listen not in ("", "off"):
            check_address(self.control_listen, "control_listen")
        _positive("heartbeat_interval", self.heartbeat_interval)
        _positive("session_lease", self.session_lease)
        _positive("cache_lease", self.cache_lease)
        if self.sync_interval < 0:
            raise SettingError(f"sync_interval: must be 0 or more, not {self.sync_interval}")
        _positive("stripe_width", self.stripe_width)
        _positive("keep_versions", self.keep_versions)
        if self.policies:
            from memstage.manager.policyfile import parse_policies

            parse_policies(self.policies)  # a bad value is said at start, naming the namespace and field


@dataclass(frozen=True, slots=True)
class BenefactorSettings:
    manager: str = setting("127.0.0.1:7070", _str, "HOST:PORT of the manager")
    listen: str = setting("127.0.0.1:0", _str, "HOST:PORT to serve chunks on (port 0 = any free port)")
    advertise: str = setting("", _str, "HOST:PORT clients use to reach this benefactor (default: the bound address)")
    data_listen: str = setting("", _str, "HOST:PORT of the stream data port, which carries chunk bytes on plain "
                               "sockets (TLS when the gRPC port has it) for clients with transport = stream "
                               "(default: the --listen host, any free port; off = none)")
    socket_dir: str = setting("", _str, "directory (mode 700, this user's) for a Unix socket of the stream data port: "
                              "clients on this machine use it instead of TCP, with no encryption cost; only "
                              "processes of this user may connect (default: none)")
    transport: str = setting("stream", _choice("stream", "grpc"), "how copies and rebuilds fetch chunks from other "
                             "benefactors: stream (their stream data ports) or grpc")
    memory: int = setting(GiB, _size, "memory donated to the staging area")
    metrics_port: int = setting(0, _int, "port of /metrics (0 = off)")
    metrics_host: str = setting("", _str, "host /metrics binds to (default: the --listen host)")
    metrics_without_client_cert: bool = setting(False, _bool, "/metrics asks no client certificate even with "
                                                "tls_ca set: any scraper that trusts its certificate may read the "
                                                "deployment's series (those that name namespaces need metrics.pem)")
    pfs: str = setting("./memstage-pfs", _str, "parallel file system directory to drain to")
    drain_bandwidth: int = setting(0, _size, "bytes per second drained at most (0 = unlimited)")
    heartbeat_interval: float = setting(30.0, _duration, "heartbeat period (the manager's is authoritative)")
    orphan_grace: float = setting(600.0, _duration, "safety net: how often held chunks are checked against the "
                                  "manager's index (orphans found are freed on its orders and counted)")
    id: str = setting("", _str, "benefactor id (default: a fresh random id per process)")
    domain: str = setting("", _str, "failure domain, e.g. rack3/node17: copies of a chunk (replicate:R) go to "
                          "benefactors of distinct domains when there are enough")
    stop_timeout: float = setting(600.0, _duration, "asked to stop (SIGTERM, Ctrl-C), first drain what is selected "
                                  "for persistence for at most this long; what is left is reported lost")
    cluster_secret: str = setting("", _str, "file holding the cluster secret shared with the manager (it writes "
                                  "<state>/secrets/cluster.key)")
    insecure: bool = setting(False, _bool, "no authentication: serve chunks to anyone and talk to a manager that "
                             "runs with --insecure")
    tls_cert: str = setting("", _str, "PEM certificate this role serves gRPC with (and presents as a client)")
    tls_key: str = setting("", _str, "PEM private key of tls_cert")
    tls_ca: str = setting("", _str, "PEM CA that peers' certificates must be signed by (as a server: clients "
                          "must present one, mutual TLS)")
    tls_server_name: str = setting("", _str, "name the peers' certificates are checked against (default: the host "
                                   "dialled)")

    def validate(self) -> None:
        check_address(self.manager, "manager")
        check_address(self.listen, "listen")
        if self.advertise:
            check_address(self.advertise, "advertise")
        if self.data_listen not in ("", "off"):
            check_address(self.data_listen, "data_listen")
        _positive("memory", self.memory)
        _positive("heartbeat_interval", self.heartbeat_interval)


@dataclass(frozen=True, slots=True)
class ClientSettings:
    manager: str = setting("127.0.0.1:7070", _str, "HOST:PORT of the manager")
    namespace: str = setting("default", _str, "namespace: the scope of paths and of deduplication")
    token: str = setting("", _str, "access token (mst_...) from `memstage token create`, or the admin token "
                         "`memstage up` wrote; not needed with a manager run with --insecure")
    tls_ca: str = setting("", _str, "PEM CA the manager's and benefactors' certificates are signed by (TLS)")
    tls_cert: str = setting("", _str, "PEM client certificate, for deployments that require one (mutual TLS)")
    tls_key: str = setting("", _str, "PEM private key of tls_cert")
    tls_server_name: str = setting("", _str, "name the servers' certificates are checked against (default: the "
                                   "host dialled)")
    transport: str = setting("stream", _choice("stream", "grpc"), "how chunk bytes and calls to the manager "
                             "travel: stream (the benefactors' stream data ports and the manager's control port: "
                             "their Unix socket when on this machine, else TCP, with TLS when the deployment has it; "
                             "gRPC where there is no such port) or grpc")
    unix_sockets: bool = setting(True, _bool, "with transport = stream, use a benefactor's or the manager's Unix "
                                 "socket when it runs on this machine (off: TCP, as from another machine)")
    metadata_cache: bool = setting(True, _bool, "a mount caches attributes and names (and lets the kernel cache "
                                   "them), kept right by the manager, which tells it of every change made elsewhere "
                                   "before that change returns (off: every stat and lookup asks the manager)")
    chunk_size: int = setting(MiB, _size, "size of the chunks a file is cut into (at most 64MiB)")
    buffer_size: int = setting(256 * MiB, _size, "bytes a writer may have in flight before write() waits")
    stripe_width: int = setting(0, _int, "benefactors per striping map (0 = the manager's default)")
    close_mode: str = setting("commit", _choice("commit", "buffered"), "commit: close() waits for the commit")
    read_ahead: int = setting(8 * MiB, _size, "bytes fetched ahead of a sequential reader (a mount run as "
                              "root also lets the kernel read that far ahead)")
    chunk_cache: int = setting(64 * MiB, _size, "chunks this client changed in place lately, kept to be read back "
                               "without a benefactor (a file patched again reads the chunk its last update sent; "
                               "0 = off)")
    rpc_timeout: float = setting(30.0, _duration, "deadline of control calls to the manager")
    full_wait: float = setting(60.0, _duration, "how long a writer waits for space when the deployment is full")
    protect_wait: float = setting(60.0, _duration, "how long fsync (and Client.wait_protected) waits for a version "
                                  "to get the copies or parity of its namespace's redundancy policy")

    def validate(self) -> None:
        check_address(self.manager, "manager")
        try:
            check_namespace(self.namespace)
        except Exception as e:
            raise SettingError(f"namespace: {e}") from None
        _positive("chunk_size", self.chunk_size)
        if self.chunk_size > MAX_CHUNK_SIZE:
            raise SettingError(f"chunk_size: {self.chunk_size} is over the limit of 64MiB")
        if self.buffer_size < self.chunk_size:
            raise SettingError(f"buffer_size: must be at least chunk_size ({self.chunk_size} bytes)")
        _positive("rpc_timeout", self.rpc_timeout)


@dataclass(frozen=True, slots=True)
class UpSettings:
    benefactors: int = setting(2, _int, "benefactor processes to start")
    memory: int = setting(GiB, _size, "memory each benefactor donates")
    pfs: str = setting("./memstage-pfs", _str, "parallel file system directory the benefactors drain to")
    state: str = setting("./memstage-state", _str, "manager state directory")
    listen: str = setting("127.0.0.1:7070", _str, "HOST:PORT of the manager")
    mount: str = setting("", _str, "also mount the staging directory (namespace default) on this directory")
    heartbeat_interval: float = setting(30.0, _duration, "benefactor heartbeat period")
    metrics_port: int = setting(0, _int, "/metrics of the manager; benefactors use the next ports (0 = off)")
    persist_every: int = setting(1, _int, "drain the first and every N-th checkpoint to the PFS (0 = never)")
    keep_versions: int = setting(2, _int, "checkpoints kept readable in memory besides the one being written")
    drain_bandwidth: int = setting(0, _size, "bytes per second each benefactor drains at most (0 = unlimited)")
    stop_timeout: float = setting(600.0, _duration, "on Ctrl-C, how long benefactors drain what is selected for "
                                  "persistence before stopping (press Ctrl-C again to stop at once)")
    insecure: bool = setting(False, _bool, "no authentication anywhere (without it the manager checks tokens and "
                             "the cluster secret it keeps in --state, and a client settings file is written there)")
    prefetch_latest: bool = setting(False, _bool, "once started, load the newest persisted checkpoint of each step "
                                    "series of namespace default back into memory from the PFS (a restart)")
    sync_interval: float = setting(1.0, _duration, "the manager acknowledges a change once a crash of it cannot "
                                   "lose it, and fsyncs its state this often (every process of the deployment runs "
                                   "here: a power cut takes the benefactors' memory anyway); 0 = an fsync per change")
    transport: str = setting("stream", _choice("stream", "grpc"), "how chunk bytes travel between the deployment's "
                             "clients and benefactors: stream (Unix sockets in <state>/sockets that only this user "
                             "can open: no encryption cost) or grpc (TLS)")

    def validate(self) -> None:
        check_address(self.listen, "listen")
        _positive("benefactors", self.benefactors)
        _positive("memory", self.memory)
        _positive("heartbeat_interval", self.heartbeat_interval)
        _positive("keep_versions", self.keep_versions)


def _positive(name: str, value: float) -> None:
    if value <= 0:
        raise SettingError(f"{name}: must be greater than 0")


SECTIONS: dict[type, str] = {
    ManagerSettings: "manager",
    BenefactorSettings: "benefactor",
    ClientSettings: "client",
    UpSettings: "up",
}

S = TypeVar("S", ManagerSettings, BenefactorSettings, ClientSettings, UpSettings)


def env_name(name: str) -> str:
    return "MEMSTAGE_" + name.upper()


def flag_name(name: str) -> str:
    return "--" + name.replace("_", "-")


def read_toml(path: str | None, section: str) -> dict[str, Any]:
    if not path:
        return {}
    try:
        with open(path, "rb") as f:
            doc = tomllib.load(f)
    except FileNotFoundError:
        raise SettingError(f"config: file {path!r} does not exist") from None
    except tomllib.TOMLDecodeError as e:
        raise SettingError(f"config: {path}: not valid TOML ({e})") from None
    except OSError as e:
        raise SettingError(f"config: cannot read {path!r} ({e.strerror})") from None
    table = doc.get(section, {})
    if not isinstance(table, dict):
        raise SettingError(f"config: {path}: [{section}] must be a table")
    return table


def load(
    cls: type[S],
    flags: Mapping[str, Any] | None = None,
    *,
    env: Mapping[str, str] | None = None,
    config: str | None = None,
    flag_style: Callable[[str], str] = flag_name,
) -> S:
    """Build cls from flags > MEMSTAGE_* env > TOML > defaults and validate it."""
    flags = {k: v for k, v in (flags or {}).items() if v is not None}
    env = os.environ if env is None else env
    section = SECTIONS[cls]
    config = config or env.get("MEMSTAGE_CONFIG")
    table = read_toml(config, section)
    names = {f.name for f in dataclasses.fields(cls)}
    for key in table:
        if key not in names:
            raise SettingError(f"config: {config}: unknown setting [{section}] {key}")
    unknown = set(flags) - names
    if unknown:
        raise SettingError(f"unknown setting {sorted(unknown)[0]!r} (known: {', '.join(sorted(names))})")
    values: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        if f.name in flags:
            raw, source = flags[f.name], flag_style(f.name)
        elif env_name(f.name) in env:
            raw, source = env[env_name(f.name)], env_name(f.name)
        elif f.name in table:
            raw, source = table[f.name], f"{config} [{section}] {f.name}"
        else:
            continue
        try:
            values[f.name] = f.metadata["parse"](raw)
        except ValueError as e:
            raise SettingError(f"{source}: {e}") from None
    settings = cls(**values)
    try:
        settings.validate()
    except SettingError as e:
        raise SettingError(_rename(str(e), flag_style)) from None
    return settings


def _rename(message: str, flag_style: Callable[[str], str]) -> str:
    """'memory: must be ...' -> '--memory: must be ...' so the user sees the name they typed."""
    name, sep, rest = message.partition(":")
    if sep and name.isidentifier():
        return f"{flag_style(name)}:{rest}"
    return message
