"""Access: who may call which manager RPC. Benefactor calls need the cluster secret; client calls a
token granting read (or write) on the request's namespace; token management an admin token. A
manager run with --insecure lets everything through (and says so in status and its log)."""

from __future__ import annotations

import hmac
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from memstage import auth
from memstage.errors import PermissionDenied, Unauthenticated

log = logging.getLogger(__name__)

BENEFACTOR = frozenset({"Register", "Heartbeat", "Reconcile", "Orders", "Leave", "DrainWork", "DrainDone"})
READ = frozenset({"LocateChunks", "Lookup", "Stat", "List", "Versions", "Checkpoints", "Watch"})
# FindChunks answers whether the namespace holds a chunk: deduplicating into it is writing to it.
WRITE = frozenset({"OpenSession", "GetStripingMap", "FindChunks", "Delete", "Rename", "Mkdir", "Rmdir", "SetAttr",
                   "Symlink", "MakeNode", "Link", "ReleaseChunks", "Commit", "Prefetch", "CollectGarbage",
                   "MarkCheckpoint", "Persist", "Free"})
ADMIN = frozenset({"CreateToken", "RevokeToken", "ListTokens"})
POLICY_FIELDS = ("persist_every", "keep_versions", "redundancy", "pfs_keep", "quota_memory", "quota_sessions",
                 "keep_deleted")


def _atime_only(attrs: Any) -> bool:
    """A read's atime update (relatime), which a read-only token may make: nothing else changes."""
    return bool(attrs.access) and not any(attrs.HasField(f) for f in ("mode", "uid", "gid", "mtime_ns", "ino"))


@dataclass(frozen=True, slots=True)
class Caller:
    grants: dict[str, str] = field(default_factory=dict)  # a client's token grants ({"*": "admin"} when insecure)
    benefactor: bool = False
    token_id: str = ""  # the client's token (named in the grants it is given, so revoking it reaches them)

    @property
    def admin(self) -> bool:
        return self.grants.get("*") == "admin"

    def sees(self, namespace: str) -> bool:
        return auth.allows(self.grants, namespace, write=False)


EVERYONE = Caller({"*": "admin"}, benefactor=True)


class Access:
    def __init__(self, secret: bytes | None, token_lookup: Callable[[str], tuple[bytes, dict[str, str]] | None]):
        self.secret = secret  # None: --insecure
        self._token = token_lookup

    @property
    def insecure(self) -> bool:
        return self.secret is None

    def grant(self, namespace: str, write: bool, caller: Caller, cap: int = 0) -> str:
        """A grant for benefactors, naming the caller's token ("" when insecure: they check nothing
        either); cap: what a write session may hold on each benefactor (0: no limit)."""
        if self.secret is None:
            return ""
        return auth.sign_grant(self.secret, namespace, "rw" if write else "r", caller.token_id, cap=cap)

    def caller(self, method: str, metadata: Sequence[tuple[str, Any]] | None) -> Caller:
        """Who is calling, authenticated (Unauthenticated if the credential is missing or wrong)."""
        if self.secret is None:
            return EVERYONE
        if method in BENEFACTOR:
            who = auth.require_proof(self.secret, metadata, auth.is_benefactor,
                                     f"{method}: only benefactors holding this deployment's cluster secret may "
                                     "call it (benefactor --cluster-secret), with a current proof (are the clocks "
                                     "within a minute?)")
            return Caller(benefactor=True, token_id=who)
        bearer = auth.header(metadata, auth.TOKEN_HEADER)
        if not bearer.startswith("Bearer "):
            raise Unauthenticated("no token: this manager requires one (the token setting: MEMSTAGE_TOKEN, --token, "
                                  "or the client settings file `memstage up` wrote)")
        token = auth.Token.parse(bearer[len("Bearer "):])
        known = self._token(token.id)
        if known is None or not hmac.compare_digest(known[0], token.digest()):
            raise Unauthenticated(f"token mst_{token.id}_…: unknown or revoked")
        return Caller(known[1], token_id=token.id)

    def check(self, method: str, caller: Caller, request: Any,
              session_namespace: Callable[[int], str | None]) -> None:
        """PermissionDenied unless the caller may make this call."""
        if caller is EVERYONE:
            return
        if method in BENEFACTOR:
            # A benefactor's proof speaks for it alone: not for another benefactor's id.
            if caller.token_id != auth.benefactor_role(request.benefactor_id):
                raise PermissionDenied(f"{method}: the proof is {caller.token_id!r}'s, the call is for benefactor "
                                       f"{request.benefactor_id!r}")
            return
        if method in ADMIN:
            if not caller.admin:
                raise PermissionDenied(f"permission denied: {method} needs an admin token; this one grants "
                                       f"{auth.describe(caller.grants)}")
            return
        if method == "Policy":
            changing = any(request.HasField(f) for f in POLICY_FIELDS)
            if changing and not caller.admin:
                raise PermissionDenied(f"permission denied: changing the policy of namespace {request.namespace} "
                                       f"needs an admin token; this one grants {auth.describe(caller.grants)}")
            self._need(caller, request.namespace, write=False)
            return
        if method in READ or (method == "SetAttr" and _atime_only(request.attrs)):
            self._need(caller, request.namespace, write=False)
        elif method in WRITE:
            self._need(caller, request.namespace, write=True)
        sessions = list(request.sessions) if method == "RenewSessions" else (
            [request.session] if method in ("AbortSession", "Commit", "ReleaseChunks") and request.session else [])
        for sid in sessions:
            ns = session_namespace(sid)
            if ns is not None:
                self._need(caller, ns, write=True)

    @staticmethod
    def _need(caller: Caller, namespace: str, write: bool) -> None:
        if not auth.allows(caller.grants, namespace, write):
            raise PermissionDenied(f"permission denied: token grants {auth.describe(caller.grants)}, not "
                                   f"{'write' if write else 'read'} on namespace {namespace}")


def authenticator(access: Access, session_namespace: Callable[[int], str | None]
                  ) -> Callable[[str, Sequence[tuple[str, Any]], Any], Caller]:
    """The manager's authenticator for its server boundary: who calls, and whether they may make
    this call (session_namespace: the namespace of an open write session, from the session table)."""

    def authenticate(method: str, metadata: Sequence[tuple[str, Any]], request: Any) -> Caller:
        caller = access.caller(method, metadata)
        access.check(method, caller, request, session_namespace)
        return caller

    return authenticate
