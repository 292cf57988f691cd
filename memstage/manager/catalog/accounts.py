"""Benefactors, namespace policies and access tokens: the catalog's small tables."""

from __future__ import annotations

import json
import time

from memstage.errors import InvalidArgument
from memstage.manager.catalog.records import Policy
from memstage.manager.catalog.store import CatalogStore
from memstage.redundancy import Redundancy


class Accounts(CatalogStore):
    # -- benefactors and policies ------------------------------------------------------------
    def remember_benefactor(self, benefactor_id: str, address: str, capacity: int, incarnation: int) -> None:
        with self._lock:
            self._db.execute(
                "INSERT INTO benefactors VALUES (?, ?, ?, ?, ?) ON CONFLICT(id) DO UPDATE SET "
                "address=excluded.address, capacity=excluded.capacity, incarnation=excluded.incarnation",
                (benefactor_id, address, capacity, time.time(), incarnation),
            )

    def incarnation(self, benefactor_id: str) -> int:
        """The incarnation the benefactor last registered as (0 if never)."""
        with self._lock:
            row = self._db.execute("SELECT incarnation FROM benefactors WHERE id=?", (benefactor_id,)).fetchone()
        return row[0] if row else 0

    def benefactor_addresses(self) -> dict[str, str]:
        with self._lock:
            return dict(self._db.execute("SELECT id, address FROM benefactors"))

    def known_benefactors(self) -> list[tuple[str, str, int]]:
        """(id, address, incarnation) of every benefactor that ever registered."""
        with self._lock:
            return list(self._db.execute("SELECT id, address, incarnation FROM benefactors"))

    def forget_benefactor(self, benefactor_id: str) -> None:
        """A benefactor that is gone for good (its locations already void) is not listed any more."""
        with self._lock:
            self._db.execute("DELETE FROM benefactors WHERE id=?", (benefactor_id,))

    def policy(self, namespace: str) -> Policy:
        with self._lock:
            policy = self._policies.get(namespace)  # asked several times per commit
            if policy is None:
                row = self._db.execute("SELECT persist_every, keep_versions, redundancy, pfs_keep, quota_memory, "
                                       "quota_sessions, keep_deleted FROM policies WHERE ns=?", (namespace,)).fetchone()
                policy = self._policies[namespace] = (
                    Policy(row[0], row[1], row[2] or self.default_policy.redundancy, row[3], row[4], row[5],
                           bool(row[6])) if row else self.default_policy)
            return policy

    def _redundancies(self) -> dict[str, Redundancy]:
        """The redundancy of every namespace holding versions."""
        with self._lock:
            namespaces = {ns for (ns,) in self._db.execute("SELECT DISTINCT ns FROM versions")}
        return {ns: Redundancy.parse(self.policy(ns).redundancy) for ns in namespaces}

    def parity_namespaces(self) -> dict[str, Redundancy]:
        """Namespaces whose policy keeps Reed-Solomon stripes (rs:K+M) -> their policy."""
        return {ns: r for ns, r in self._redundancies().items() if r.parity}

    def replicated_namespaces(self) -> dict[str, int]:
        """Namespaces whose policy keeps more than one copy of each chunk -> copies."""
        return {ns: r.copies for ns, r in self._redundancies().items() if r.copies > 1}

    def set_policy(self, namespace: str, policy: Policy) -> None:
        if policy.keep_versions < 1:
            raise InvalidArgument("keep_versions must be at least 1 (the latest version stays readable)")
        with self._lock:
            self._db.execute("INSERT INTO policies (ns, persist_every, keep_versions, redundancy, pfs_keep, "
                             "quota_memory, quota_sessions, keep_deleted) VALUES (?, ?, ?, ?, ?, ?, ?, ?) "
                             "ON CONFLICT(ns) DO UPDATE SET persist_every=excluded.persist_every, "
                             "keep_versions=excluded.keep_versions, redundancy=excluded.redundancy, "
                             "pfs_keep=excluded.pfs_keep, quota_memory=excluded.quota_memory, "
                             "quota_sessions=excluded.quota_sessions, keep_deleted=excluded.keep_deleted",
                             (namespace, policy.persist_every, policy.keep_versions, policy.redundancy,
                              policy.pfs_keep, policy.quota_memory, policy.quota_sessions, int(policy.keep_deleted)))
            self._policies.pop(namespace, None)

    # -- access tokens (memstage.auth) ------------------------------------------------------------
    def add_token(self, token_id: str, digest: bytes, grants: dict[str, str], note: str = "") -> None:
        with self._lock:
            self._db.execute("INSERT INTO tokens (id, digest, grants, created_at, note) VALUES (?, ?, ?, ?, ?)",
                             (token_id, digest, json.dumps(grants, sort_keys=True), time.time(), note))

    def token(self, token_id: str) -> tuple[bytes, dict[str, str]] | None:
        """(digest of its secret, grants) of a token that is not revoked. Every client call asks:
        tokens in use are kept in memory, so that a call does not wait for the catalog's lock
        while a commit holds it."""
        known = self._tokens.get(token_id)
        if known is not None:
            return known
        with self._lock:
            row = self._db.execute("SELECT digest, grants FROM tokens WHERE id=? AND revoked=0",
                                   (token_id,)).fetchone()
            if not row:
                return None
            known = self._tokens[token_id] = (bytes(row[0]), json.loads(row[1]))
        return known

    def revoke_token(self, token_id: str) -> bool:
        with self._lock:
            self._tokens.pop(token_id, None)  # under the lock: a lookup cannot put it back
            return bool(self._db.execute("UPDATE tokens SET revoked=1 WHERE id=?", (token_id,)).rowcount)


    def revoked_tokens(self) -> list[str]:
        with self._lock:
            return [t for (t,) in self._db.execute("SELECT id FROM tokens WHERE revoked=1 ORDER BY id")]

    def tokens(self) -> list[tuple[str, dict[str, str], float, bool, str]]:
        with self._lock:
            rows = self._db.execute("SELECT id, grants, created_at, revoked, note FROM tokens "
                                    "ORDER BY created_at").fetchall()
        return [(i, json.loads(g), at, bool(r), note) for i, g, at, r, note in rows]
