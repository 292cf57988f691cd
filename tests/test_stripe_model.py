"""The manager's Reed-Solomon stripe bookkeeping against a simple reference model, over random
sequences of commits, retention, deletes, new stripes, releases, benefactor losses and restarts.
No sockets: a real catalog in a temporary directory.

What must hold: a chunk stays in memory exactly while an in-memory version or a stripe needs it
(its in-memory references are the versions plus the stripes it is a member of); a stripe lives
while one of its data members is needed by a version; what is freed is needed by nothing; a
member that is lost is rebuildable while its stripe keeps K readable members; and a restart loads
the same state."""

from __future__ import annotations

import shutil
import tempfile

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from memstage.chunks import ChunkKey
from memstage.manager.catalog import Catalog, Policy
from memstage.manager.stripes import ABSENT, Stripe
from memstage.redundancy import Redundancy

NS = "m"
RS = Redundancy.parse("rs:2+1")
BENEFACTORS = [f"b{i}" for i in range(5)]


def key(n: int) -> ChunkKey:
    return ChunkKey(bytes([n % 255 + 1]) * 15 + bytes([n // 255]), 10 + n % 7)  # never the hole hash


class StripeModel(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.dir = tempfile.mkdtemp(prefix="memstage-stripe-model-")
        self.catalog = Catalog(self.dir, Policy(0, 2, "rs:2+1"))
        self.alive = set(BENEFACTORS)
        self.versions: dict[str, list[list[ChunkKey]]] = {}  # path -> in-memory versions' chunks, oldest first
        self.stripes: dict[int, tuple[ChunkKey, ...]] = {}  # the model's stripes: id -> members
        self.next_parity = 1000

    def teardown(self) -> None:
        self.catalog.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    # -- the model ---------------------------------------------------------------------------------
    def version_refs(self, k: ChunkKey) -> int:
        return sum(1 for vs in self.versions.values() for v in vs if k in v)

    def stripe_refs(self, k: ChunkKey) -> int:
        return sum(1 for members in self.stripes.values() if k in members)

    def check_freed(self, freed: dict) -> None:
        for (_, k) in freed:
            assert self.version_refs(k) == 0 and self.stripe_refs(k) == 0, f"{k} freed while still needed"

    # -- rules ---------------------------------------------------------------------------------------
    @rule(path=st.sampled_from(["/x", "/y"]), chunks=st.lists(st.integers(0, 11), min_size=1, max_size=4))
    def commit(self, path: str, chunks: list[int]) -> None:
        keys = [key(n) for n in chunks]
        refs = []
        for n, k in zip(chunks, keys, strict=True):
            held = self.catalog.find(NS, [k], self.alive)[0]
            bf = BENEFACTORS[n % len(BENEFACTORS)]
            if not held and bf not in self.alive:
                return  # nowhere to store it: the writer would have placed it elsewhere
            refs.append((k, [] if held else [bf]))
        self.catalog.commit(NS, path, sum(k.length for k in keys), refs, self.alive)
        self.versions.setdefault(path, []).append(keys)
        freed = self.catalog.apply_retention(NS, path)
        self.versions[path] = self.versions[path][-2:]  # keep_versions=2, never persisted: older ones go
        self.check_freed(freed)

    @rule(path=st.sampled_from(["/x", "/y"]))
    def delete(self, path: str) -> None:
        if path not in self.versions:
            return
        _, freed = self.catalog.delete_file(NS, path)
        del self.versions[path]
        self.check_freed(freed)

    @rule()
    def encode(self) -> None:
        """Benefactors computed a stripe for chunks no stripe protects yet."""
        candidates = self.catalog.unstriped({NS: RS}, self.alive).get(NS, [])
        if not candidates:
            return
        data = [ik[1] for ik, _ in candidates[:RS.k]]
        holders = {bf for _, hs in candidates[:RS.k] for bf in hs}
        others = sorted(self.alive - holders)
        if not others:
            return
        parity = key(self.next_parity)
        self.next_parity += 1
        members = (*data, *([ABSENT] * (RS.k - len(data))), parity)
        stripe = Stripe(self.catalog.new_stripe_id(), NS, RS.k, RS.m, max(k.length for k in data), members)
        assert self.catalog.add_stripe(stripe, {RS.k: (others[0], self.catalog.new_gen())})
        self.stripes[stripe.id] = tuple(m for m in members if m != ABSENT)

    @rule()
    def release(self) -> None:
        freed = self.catalog.release_stripes()
        for sid, members in list(self.stripes.items()):
            if not any(self.version_refs(k) for k in members[:RS.k] if k in members[:-RS.m]):
                del self.stripes[sid]
        self.check_freed(freed)

    @precondition(lambda self: len(self.alive) > 3)
    @rule(bf=st.sampled_from(BENEFACTORS))
    def lose_benefactor(self, bf: str) -> None:
        if bf not in self.alive:
            return
        self.alive.discard(bf)
        lost = self.catalog.void_benefactor(bf, self.alive, f"{bf} died")
        for _, path, version in lost:
            # Lost only if some chunk of it is readable nowhere and no stripe can rebuild it.
            rec = self.catalog.version(NS, path, version)
            assert any(not self.catalog.find(NS, [k], self.alive)[0]
                       and not self.catalog._recoverable((NS, k), self.alive) for k in rec.keys)
            # A lost version stays listed (and keeps what survives of it) until deleted or retired.

    @rule()
    def restart(self) -> None:
        before = {st.id: st.members for st in self.catalog._stripes}
        self.catalog.close()
        self.catalog = Catalog(self.dir, Policy(0, 2, "rs:2+1"))
        assert {st.id: st.members for st in self.catalog._stripes} == before

    # -- invariants ---------------------------------------------------------------------------------
    @invariant()
    def memory_references_are_versions_plus_stripes(self) -> None:
        keys = {k for vs in self.versions.values() for v in vs for k in v} | {
            k for members in self.stripes.values() for k in members} | {k for (_, k), _ in self.catalog._index.items()}
        for k in keys:
            expected = self.version_refs(k) + self.stripe_refs(k)
            assert self.catalog._index.mem_refs((NS, k)) == expected, (k, expected)
        assert {st.id for st in self.catalog._stripes} == set(self.stripes)


TestStripeModel = StripeModel.TestCase
TestStripeModel.settings = settings(max_examples=60, stateful_step_count=30, deadline=None,
                                    suppress_health_check=[HealthCheck.too_slow])
