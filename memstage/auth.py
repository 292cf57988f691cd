"""Credentials: namespace tokens for clients, the cluster secret for benefactors, and the short-lived
grants the manager signs so that benefactors can check a client's access without asking it.

- A **token** is `mst_<id>_<secret>`. The manager keeps only the id, a SHA-256 of the secret and
  what it grants: `r` (read) or `rw` on named namespaces, or `admin` on `*`.
- The **cluster secret** (32 random bytes, hex, in a file) is shared by the manager and its
  benefactors. Benefactors prove they hold it on every call to the manager and to each other.
- A **grant** is `<namespace>:<mode>:<expiry>:<token id>:<cap>:<hmac>` signed with a key derived
  from the cluster secret (cap: the bytes a write session may hold on each benefactor, from its
  namespace's memory quota; 0 for none). The manager hands one out with a write session (`rw`) and with a version map
  (`r`), for a few minutes (clients get fresh ones with every map and session renewal);
  benefactors verify it on Put, Get, Has and ReadDrained, with no round trip, and refuse the grants
  of a token the manager told them was revoked.

Without TLS (still to come) these travel in clear on the network: run on a trusted network, or
with `--insecure` only where nobody else can reach the ports.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import secrets
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from memstage.errors import PermissionDenied, SettingError, Unauthenticated

TOKEN_HEADER = "authorization"  # "Bearer <token>"
CLUSTER_HEADER = "x-memstage-cluster"
GRANT_HEADER = "x-memstage-grant"
GRANT_SECONDS = 300.0  # short: a revoked token's grants die within this even where no word of it reached

_TOKEN = re.compile(r"^mst_([0-9a-f]{8})_([0-9a-f]{32})$")
MODES = ("r", "rw", "admin")


@dataclass(frozen=True, slots=True)
class Token:
    id: str
    secret: str

    @classmethod
    def new(cls) -> Token:
        return cls(secrets.token_hex(4), secrets.token_hex(16))

    @classmethod
    def parse(cls, text: str) -> Token:
        m = _TOKEN.match(text.strip())
        if not m:
            raise Unauthenticated("token is malformed (expected mst_<id>_<secret>, as `memstage token create` prints)")
        return cls(m.group(1), m.group(2))

    def __str__(self) -> str:
        return f"mst_{self.id}_{self.secret}"

    def digest(self) -> bytes:
        return hashlib.sha256(self.secret.encode()).digest()


def check_grants(grants: Mapping[str, str]) -> dict[str, str]:
    out = {}
    for ns, mode in grants.items():
        if mode not in MODES or (mode == "admin") != (ns == "*"):
            raise SettingError(f"token: grant {ns!r}: {mode!r} (use r or rw on a namespace, admin on *)")
        out[ns] = mode
    return out


def allows(grants: Mapping[str, str], namespace: str, write: bool) -> bool:
    if grants.get("*") == "admin":
        return True
    mode = grants.get(namespace)
    return mode == "rw" or (mode == "r" and not write)


def describe(grants: Mapping[str, str]) -> str:
    if grants.get("*") == "admin":
        return "admin"
    parts = [f"{'read-write' if m == 'rw' else 'read'} on namespace {ns}" for ns, m in sorted(grants.items())]
    return ", ".join(parts) or "nothing"


# -- the cluster secret ---------------------------------------------------------------------------
def new_secret_file(path: Path) -> bytes:
    """Create the cluster secret file (0600) if it does not exist; return the secret."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    if not path.exists():
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_hex(32) + "\n")
    return read_secret_file(str(path), "cluster secret")


def read_secret_file(path: str, setting: str) -> bytes:
    try:
        text = Path(path).read_text().strip()
    except OSError as e:
        raise SettingError(f"{setting}: cannot read {path!r} ({e.strerror})") from None
    if not re.fullmatch(r"[0-9a-f]{64}", text):
        raise SettingError(f"{setting}: {path!r} does not hold a cluster secret (64 hex digits)")
    return bytes.fromhex(text)


PROOF_WINDOW_S = 60.0  # a proof is good in its minute and the next (clocks a little apart, calls in flight)
MANAGER = "m"  # who the manager's proof (on its wakes) names


def benefactor_role(benefactor_id: str) -> str:
    return f"b/{benefactor_id}"


def _role_key(secret: bytes, who: str) -> bytes:
    return hmac.new(secret, b"memstage role " + who.encode(), hashlib.sha256).digest()


def role_proof(secret: bytes, who: str, now: float | None = None) -> str:
    """What a benefactor (who = benefactor_role(id)) or the manager (MANAGER) presents: it names
    who, holds for a minute or two, and only holders of the cluster secret can compute it. A value
    seen on the wire speaks for that one benefactor only, and not for long."""
    window = int((time.time() if now is None else now) // PROOF_WINDOW_S)
    body = f"{who}:{window}"
    return f"{body}:{hmac.new(_role_key(secret, who), body.encode(), hashlib.sha256).hexdigest()}"


def proof_holder(secret: bytes, proof: str, now: float | None = None) -> str:
    """Who a valid, current proof names ("" if it is not one)."""
    parts = proof.rsplit(":", 2)
    if len(parts) != 3 or not parts[1].lstrip("-").isdigit():
        return ""
    who, window, mac = parts[0], int(parts[1]), parts[2]
    current = int((time.time() if now is None else now) // PROOF_WINDOW_S)
    if not current - 1 <= window <= current + 1:
        return ""
    want = hmac.new(_role_key(secret, who), f"{who}:{window}".encode(), hashlib.sha256).hexdigest()
    return who if hmac.compare_digest(mac, want) else ""


def is_benefactor(who: str) -> bool:
    return who.startswith("b/")


def require_proof(secret: bytes, metadata: Sequence[tuple[str, str | bytes]] | None,
                  accept: Callable[[str], bool] = bool,
                  refusal: str = "only holders of this deployment's cluster secret may call it") -> str:
    """Who the call's cluster proof names, if it is valid, current and `accept`ed; Unauthenticated
    (with `refusal`) otherwise. The one check of the cluster secret every role's boundary makes."""
    who = proof_holder(secret, header(metadata, CLUSTER_HEADER))
    if not who or not accept(who):
        raise Unauthenticated(refusal)
    return who


class RoleProof:
    """The current proof of `who`, for metadata sent with every call (recomputed each minute)."""

    def __init__(self, secret: bytes, who: str) -> None:
        self._secret = secret
        self._who = who
        self._window = -1
        self._value = ""

    def __call__(self) -> str:
        window = int(time.time() // PROOF_WINDOW_S)
        if window != self._window:
            self._value, self._window = role_proof(self._secret, self._who), window
        return self._value


def _grant_key(secret: bytes) -> bytes:
    return hmac.new(secret, b"memstage grant", hashlib.sha256).digest()


@dataclass(frozen=True, slots=True)
class Grant:
    token_id: str  # the token it was given to ("" for none)
    cap: int  # bytes a write session may hold on one benefactor (0: no limit)


def sign_grant(secret: bytes, namespace: str, mode: str, token_id: str = "", now: float | None = None,
               cap: int = 0) -> str:
    """A grant of `mode` on `namespace` for the holder of token `token_id`, valid GRANT_SECONDS;
    `cap`: what a write session may hold on each benefactor (0: no limit)."""
    expiry = int((time.time() if now is None else now) + GRANT_SECONDS)
    body = f"{namespace}:{mode}:{expiry}:{token_id}:{cap}"
    return f"{body}:{hmac.new(_grant_key(secret), body.encode(), hashlib.sha256).hexdigest()}"


def grant_namespace(grant: str) -> str:
    return grant.split(":", 1)[0]


def verify_grant(secret: bytes, grant: str, namespace: str, write: bool, now: float | None = None,
                 revoked: Mapping[str, float] | None = None) -> Grant:
    """What a valid, unexpired grant for this access says; PermissionDenied otherwise, and for a
    grant of a token in `revoked`."""
    body, _, mac = grant.rpartition(":")
    parts = body.split(":")
    ns, mode, expiry, token_id, cap = parts if len(parts) == 5 else ("", "", "0", "", "0")
    want = hmac.new(_grant_key(secret), body.encode(), hashlib.sha256).hexdigest()
    if not body or len(parts) != 5 or not cap.isdigit() or not hmac.compare_digest(mac, want):
        raise PermissionDenied(f"namespace {namespace}: no valid grant from the manager")
    if not expiry.isdigit() or int(expiry) < (time.time() if now is None else now):
        raise PermissionDenied(f"namespace {namespace}: the manager's grant expired (look the file up again)")
    if ns != namespace or (write and mode != "rw"):
        raise PermissionDenied(f"grant is for {'read-write' if mode == 'rw' else 'read'} on namespace {ns}, "
                               f"not {'write' if write else 'read'} on {namespace}")
    if token_id and revoked and token_id in revoked:
        raise PermissionDenied(f"namespace {namespace}: token {token_id} was revoked")
    return Grant(token_id, int(cap))


def header(metadata: Sequence[tuple[str, str | bytes]] | None, name: str) -> str:
    for k, v in metadata or ():
        if k == name:
            return v.decode() if isinstance(v, bytes) else v
    return ""
