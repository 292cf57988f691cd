"""Who may call a benefactor: its boundary's authenticator, and the caller it hands the service.

Holders of the cluster secret (other benefactors copying and rebuilding, the manager) may read and
write any namespace; a client needs the manager's grant for the namespace it reads or writes; Wake
is for the manager alone. A grant is judged when the call starts where the request names the
namespace; a Put's namespace comes with its frames, so the service judges it there, with the
caller (`Caller.require`).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from memstage import auth
from memstage.boundary import Metadata
from memstage.errors import InvalidPath, PermissionDenied, Unauthenticated
from memstage.paths import split_drained

log = logging.getLogger(__name__)

Judge = Callable[[str, str, bool, float | None], auth.Grant]  # grant, namespace, write, as of when


@dataclass(frozen=True)
class Caller:
    """A call's authenticated caller: a holder of the cluster secret, or the bearer of a grant."""

    holder: str = ""  # who a valid cluster proof names ("" for a client)
    grant: str = ""
    # When the call started: a Put stream's grant is judged as of then (a long write outlives a
    # short grant); its token's revocation still ends it at any chunk.
    since: float | None = None
    judge: Judge | None = field(default=None, repr=False, compare=False)

    def require(self, namespace: str, write: bool) -> auth.Grant | None:
        """What the grant allows for this access (None for a holder of the cluster secret);
        PermissionDenied if it does not cover it."""
        if self.holder or self.judge is None:
            return None
        return self.judge(self.grant, namespace, write, self.since)


# Refusal reasons, as counted by the refused-chunks metric.
Refused = Callable[[str], None]


class BenefactorAccess:
    """The authenticator of a benefactor's boundary (see the module's doc)."""

    def __init__(self, secret: bytes, benefactor_id: str, refused: Refused = lambda reason: None) -> None:
        self.secret = secret
        self.id = benefactor_id
        self._refused = refused
        # Tokens the manager revoked -> until when their grants could still be valid (then forgotten).
        self._revoked: dict[str, float] = {}
        self._revoked_lock = threading.Lock()

    def revoke(self, token_ids: Iterable[str]) -> None:
        """The manager revoked these tokens: the grants they were given are refused from now on."""
        ids = list(token_ids)
        now = time.time()
        with self._revoked_lock:  # copied, then swapped: calls read it without the lock
            fresh = {t: u for t, u in self._revoked.items() if u > now}
            fresh.update((t, now + auth.GRANT_SECONDS + 60) for t in ids)
            self._revoked = fresh
        if ids:
            log.info("tokens revoked: %s", ", ".join(ids))

    def __call__(self, method: str, metadata: Metadata, request: Any) -> Caller:
        if method == "Wake":  # a grant does not do: only the manager sends it
            return Caller(holder=auth.require_proof(
                self.secret, metadata, lambda who: who == auth.MANAGER,
                f"benefactor {self.id}: Wake is for the manager of this deployment (cluster secret)"))
        if method == "Hold":  # stripe members handed over by other benefactors: not for clients
            return Caller(holder=auth.require_proof(
                self.secret, metadata, lambda who: who != auth.MANAGER,
                f"benefactor {self.id}: Hold is for the benefactors of this deployment (cluster secret)"))
        namespace = self._namespace(method, request)
        try:  # a benefactor of this deployment, or the manager
            return Caller(holder=auth.require_proof(self.secret, metadata))
        except Unauthenticated:
            pass
        grant = auth.header(metadata, auth.GRANT_HEADER)
        if not grant:
            self._refused("unauthenticated")
            raise Unauthenticated(f"benefactor {self.id}: no grant (clients get one from the manager with each "
                                  "session and version map)")
        caller = Caller(grant=grant, since=time.time() if request is None else None, judge=self._judge)
        if namespace is not None:
            caller.require(namespace, write=False)
        return caller

    def _namespace(self, method: str, request: Any) -> str | None:
        """The namespace a request reads (None: it comes later, with the frames of a Put)."""
        if request is None:
            return None
        if method == "ReadDrained":
            try:
                # Judged as sent: a name with '..', '.' or an empty component is refused, not resolved, so
                # the namespace the grant is checked against is the directory the file is read from.
                return split_drained(request.drained)[0]
            except InvalidPath as e:
                self._refused("invalid_path")
                raise InvalidPath(f"benefactor {self.id}: {e}") from None
        return str(request.namespace)

    def _judge(self, grant: str, namespace: str, write: bool, since: float | None) -> auth.Grant:
        try:
            return auth.verify_grant(self.secret, grant, namespace, write, now=since, revoked=self._revoked)
        except PermissionDenied as e:
            self._refused("permission_denied")
            raise PermissionDenied(f"benefactor {self.id}: {e}") from None
