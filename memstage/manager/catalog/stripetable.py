"""Reed-Solomon stripes in the catalog (memstage.manager.stripes): recorded, released, and
how whole each one is."""

from __future__ import annotations

import sys
from collections.abc import Sequence

from memstage.chunks import ChunkKey
from memstage.manager.catalog.records import Freed, Names
from memstage.manager.catalog.store import CatalogStore
from memstage.manager.chunkindex import Holders, IndexKey
from memstage.manager.stripes import ABSENT, Copies, Spread, Stripe, beyond, recoverable, spread
from memstage.redundancy import Redundancy


class StripeTable(CatalogStore):
    def new_stripe_id(self) -> int:
        with self._lock:
            self._next_stripe += 1
            return self._next_stripe

    def _spread(self, stripe: Stripe, alive: Names) -> Spread:
        """(under the lock) How whole the stripe is (manager.stripes.spread)."""
        iks = [(stripe.namespace, key) for key in stripe.members]
        return spread(stripe.k, [Copies(True, False, ()) if ik[1] == ABSENT else
                                 Copies(False, bool(self._index.drained(ik)), self._index.locations(ik))
                                 for ik in iks], alive)

    def _recoverable(self, ik: IndexKey, alive: Names) -> bool:
        """(under the lock) Some stripe of the chunk still has K members to rebuild it from."""
        return any(recoverable(st, self._spread(st, alive).readable) for st in self._stripes.of(ik))

    def _beyond(self, ik: IndexKey, alive: Names) -> str:
        """Why a chunk in a stripe cannot be rebuilt ("" when it is in none)."""
        stripes = self._stripes.of(ik)
        if not stripes:
            return ""
        return beyond(stripes[-1], ik[1], self._spread(stripes[-1], alive).readable)

    def _version_needs(self, ik: IndexKey) -> int:
        """In-memory references of versions (those of stripes not counted)."""
        return self._index.mem_refs(ik) - self._stripes.pins(ik)

    def unstriped(self, namespaces: dict[str, Redundancy], alive: Names
                  ) -> dict[str, list[tuple[IndexKey, list[str]]]]:
        """Per namespace keeping stripes: chunks a version needs in memory, not on the PFS, in no
        stripe yet, with a live holder: (chunk, live holders), in the index's order (commit order)."""
        out: dict[str, list[tuple[IndexKey, list[str]]]] = {}
        with self._lock:
            for ik, live, _ in self._index.short_held({ns: sys.maxsize for ns in namespaces}, alive):
                if not ik[1].is_hole and not self._stripes.pins(ik):
                    out.setdefault(ik[0], []).append((ik, live))
        return out

    def add_stripe(self, stripe: Stripe, parity: dict[int, tuple[str, int]]) -> bool:
        """Record an encoded stripe, its parity held at (benefactor, gen). False (nothing recorded:
        the caller frees the parity) if one of its data members is no longer needed in memory."""
        with self._lock:
            for _, ik in stripe.data():
                if self._version_needs(ik) <= 0 or self._index.drained(ik):
                    return False
            with self._transaction():
                self._db.execute("INSERT INTO stripes VALUES (?, ?, ?, ?, ?, ?)",
                                 (stripe.id, stripe.namespace, stripe.k, stripe.m, stripe.size, stripe.pack()))
                self._stripes.add(stripe)
                for i, ik in stripe.real():
                    self._bump(ik, 1, 1)
                    if i in parity:
                        bf, gen = parity[i]
                        self._index.add_location(ik, bf, gen)
                        self._log().add(ik[0], ik[1], bf, gen)
        return True

    def release_stripes(self) -> Freed:
        """Drop the stripes none of whose data members a version needs in memory any more (gone,
        or on the PFS): their members are unpinned, and what nothing else needs is returned to free."""
        freed: Freed = {}
        with self._lock:
            done = [st for st in self._stripes
                    if not any(self._version_needs(ik) > 0 and not self._index.drained(ik) for _, ik in st.data())]
            if not done:
                return freed
            with self._transaction():
                for st in done:
                    self._db.execute("DELETE FROM stripes WHERE id=?", (st.id,))
                    self._stripes.remove(st.id)
                    for _, ik in st.real():
                        dropped = self._bump(ik, -1, -1)
                        if dropped:
                            freed.setdefault(ik, {}).update(dropped)
        return freed

    def stripe_health(self, alive: Names) -> list[tuple[Stripe, list[int], int]]:
        """Stripes with members to rebuild (no live copy, or sharing their benefactor with another
        member; a data member on the PFS counts as readable): (stripe, those members, members
        readable)."""
        out = []
        with self._lock:
            for st in self._stripes:
                readable, rebuild = self._spread(st, alive)
                if rebuild:
                    out.append((st, rebuild, readable))
        return out

    def stripe_members(self, stripe: Stripe) -> list[tuple[Holders, str]]:
        """Locations and drained path of each member (absent members: none)."""
        with self._lock:
            return [({}, "") if key == ABSENT else
                    (self._index.locations((stripe.namespace, key)), self._index.drained((stripe.namespace, key)))
                    for key in stripe.members]

    def stripes_of(self, namespace: str, keys: Sequence[ChunkKey]) -> list[Stripe | None]:
        """The stripe protecting each chunk (the newest one, if several), or None."""
        with self._lock:
            found = [self._stripes.of((namespace, k)) for k in keys]
            return [s[-1] if s else None for s in found]

    def stripe_count(self) -> int:
        with self._lock:
            return len(self._stripes)
