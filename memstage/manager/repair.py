"""Repair: rounds that order copies of chunks short of their namespace's copies and the parity or
rebuilt members of Reed-Solomon stripes; prefetches that order chunks loaded from the PFS; and
what benefactors report of those orders (copy, stripe and load results)."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence

from memstage.chunks import ChunkKey
from memstage.manager import codec
from memstage.manager.chunkindex import IndexKey
from memstage.manager.codec import stripe_spec
from memstage.manager.namespace import missing as no_such_name
from memstage.manager.nodes import DIR, FILE
from memstage.manager.state import State
from memstage.manager.stripes import ABSENT, NewStripe, Stripe, group, targets
from memstage.proto import manager_pb2

log = logging.getLogger(__name__)


class Repair:
    def __init__(self, state: State) -> None:
        self.s = state
        self._domains_warned = False
        self._narrow_warned = False  # warned once: too few benefactors for a stripe

    def copied(self, bf: str, results: Sequence[manager_pb2.CopyResult]) -> None:
        """Copies a benefactor made (or could not make): a made copy becomes a location, unless no
        version needs the chunk in memory any more (then it is freed again)."""
        self._record_copies(bf, results)
        self.s.protection_changed()
        with self.s.lock:
            room = (self.s.replicator.in_flight < self.s.replicator.max_in_flight // 2
                    and self.s.stripe_work.in_flight < self.s.stripe_work.max_in_flight // 2)
        if room and self.s.unprotected + self.s.stripe_work.unprotected:
            self.s.wake.set()  # more to copy or encode: the next round now, not at the next housekeeping period

    def _record_copies(self, bf: str, results: Sequence[manager_pb2.CopyResult]) -> None:
        for r in results:
            ik = (r.namespace, codec.key(r.key))
            if r.stripe:
                self._stripe_result(bf, r)
                continue
            if r.loaded:
                self._load_result(bf, ik, r)
                continue
            self.s.metrics.copies.labels("failed" if r.error else "made").inc()
            if r.error:
                log.warning("copy of chunk %s to %s failed: %s", ik[1], bf, r.error)
            else:
                self.s.copied_bytes += ik[1].length
                # Recorded before the copy stops being pending: a repair round in between would
                # see the chunk short of a copy and order it again.
                if not self.s.catalog.add_copy(ik, bf, r.gen):
                    with self.s.lock:
                        self.s.orders.push(bf, r.namespace, free=[(ik[1], r.gen)])
            with self.s.lock:
                self.s.replicator.finished(ik, bf, not r.error)

    def _load_result(self, bf: str, ik: IndexKey, r: manager_pb2.CopyResult) -> None:
        """A benefactor loaded a chunk from the PFS for a prefetch (or could not)."""
        if r.error:
            log.warning("loading chunk %s from the PFS on %s failed: %s", ik[1], bf, r.error)
        elif not self.s.catalog.add_copy(ik, bf, r.gen):  # recorded before it stops being pending
            with self.s.lock:
                self.s.orders.push(bf, r.namespace, free=[(ik[1], r.gen)])
        with self.s.lock:
            self.s.loads.finished(ik, bf, r.gen, r.error)
        self.s.metrics.prefetched.labels("failed" if r.error else "loaded").inc(ik[1].length)

    def prefetch(self, namespace: str, path: str, latest: bool, start: bool) -> manager_pb2.PrefetchReply:
        """Order what a file or tree needs in memory loaded from the PFS; how far that has come."""
        if path != "/":
            path = self.s.catalog.canonical(namespace, path)
        kind = self.s.catalog.kind(namespace, path)
        if kind not in (FILE, DIR):
            raise no_such_name(namespace, path)
        with self.s.lock:
            now, alive, free, addresses, _ = self.s.live_view()
        wanted = self.s.catalog.want_in_memory(namespace, path, alive, latest)
        with self.s.lock:
            self.s.loads.expire(now)
            if start:  # the first call of a prefetch: what failed before is tried again
                self.s.loads.retry([ik for ik, _ in wanted.load])
            plan = self.s.loads.plan(wanted.load, free, now)
            for ik, target, drained in plan:
                gen = self.s.catalog.new_gen()
                self.s.orders.push(target, namespace, load=[(ik[1], gen, drained)])
                self.s.registry.note_used(target, ik[1].length)
                self.s.loads.started(ik, target, gen, now)
            waiting = [ik for ik, _ in wanted.load]
            failed = [ik for ik in waiting if ik in self.s.loads.failed]
            pending = sum(1 for ik in waiting if ik in self.s.loads.pending)
            error = self.s.loads.failed[failed[-1]] if failed else ""
        if plan:
            log.info("prefetch %s:%s: %d chunks ordered loaded from the PFS", namespace, path, len(plan))
        return manager_pb2.PrefetchReply(files=wanted.files, bytes=wanted.bytes, loaded_bytes=wanted.loaded,
                                         failed_chunks=len(failed), error=error, pending_chunks=pending)


    def _stripe_result(self, reporter: str, r: manager_pb2.CopyResult) -> None:
        """A benefactor computed a stripe member (new parity, or a rebuilt one), or could not; new
        parity it handed on is held by `r.holder`."""
        bf = r.holder or reporter
        key = codec.key(r.key)
        self.s.metrics.stripe_cpu.inc(r.cpu_seconds)
        if r.error:
            log.warning("stripe %d member %d on %s failed: %s", r.stripe, r.index, bf, r.error)
        with self.s.lock:
            self.s.stripe_work.cpu_seconds += r.cpu_seconds
            rebuilding = self.s.stripe_work.rebuilding.get((r.stripe, r.index), ("", 0, 0.0))[:2] == (bf, r.gen)
        if rebuilding and not r.error and not self.s.catalog.add_copy((r.namespace, key), bf, r.gen):
            with self.s.lock:  # recorded before it stops being pending (else it might be ordered again)
                self.s.orders.push(bf, r.namespace, free=[(key, r.gen)])
        with self.s.lock:
            rebuilt = self.s.stripe_work.rebuild_done(r.stripe, r.index, bf, not r.error, key.length)
            done = None if rebuilt else self.s.stripe_work.parity_done(r.stripe, r.index, key, bf, r.gen, not r.error)
        self.s.metrics.stripe_members.labels("rebuilt" if rebuilding else "encoded",
                                           "failed" if r.error else "made").inc()
        if r.error or rebuilding:
            return
        if done is None:
            return
        members = done.data + tuple(ABSENT for _ in range(done.k - len(done.data)))
        parity = tuple(done.done[done.k + j][0] for j in range(done.m))
        stripe = Stripe(r.stripe, done.namespace, done.k, done.m, done.size, members + parity)
        recorded = self.s.catalog.add_stripe(stripe, {i: (b, g) for i, (_, b, g) in done.done.items()})
        with self.s.lock:  # its data members stay pending until recorded: no second stripe for them
            self.s.stripe_work.finished(r.stripe)
        if not recorded:
            self._free_parity(done.namespace, done.done.values())
        else:
            log.debug("stripe %d of %s encoded: %d data members, %d parity", stripe.id, done.namespace,
                      len(done.data), done.m)

    def _free_parity(self, namespace: str, computed: Iterable[tuple[ChunkKey, str, int]]) -> None:
        with self.s.lock:
            for key, bf, gen in computed:
                self.s.orders.push(bf, namespace, free=[(key, gen)])

    def repair_stripes(self) -> None:
        """One round for namespaces keeping Reed-Solomon stripes: drop the stripes nothing needs,
        have benefactors encode parity for chunks no stripe protects yet, and rebuild the members
        of stripes that lost some (from any K others) onto benefactors holding none of the stripe."""
        self.s.free(self.s.catalog.release_stripes())
        namespaces = self.s.catalog.parity_namespaces()
        if not namespaces and not self.s.catalog.stripe_count():
            self.s.stripe_work.unprotected = self.s.stripe_work.missing = 0
            return
        with self.s.lock:
            now, alive, room, addresses, domains = self.s.live_view()
            abandoned = self.s.stripe_work.expire(now)
            pending = self.s.stripe_work.pending_data()
            budget = self.s.stripe_work.max_in_flight - self.s.stripe_work.in_flight
        for s in abandoned:
            self._free_parity(s.namespace, s.done.values())
        shared = 0
        orders: list[tuple[str, str, manager_pb2.CopyOrder]] = []  # (target, namespace, order)
        # Rebuild first: a stripe short of members tolerates fewer failures until it is whole again.
        health = self.s.catalog.stripe_health(alive)
        missing_members = sum(len(missing) for _, missing, _ in health)
        self.s.metrics.stripe_missing.set(missing_members)
        unstriped = 0
        for stripe, missing, available in health:
            if available < stripe.k:
                continue  # beyond its tolerance: its versions are lost (or on the PFS)
            with self.s.lock:
                missing = [i for i in missing if (stripe.id, i) not in self.s.stripe_work.rebuilding]
            if not missing or budget <= 0:
                continue
            holders = {bf for holders, _ in self.s.catalog.stripe_members(stripe) for bf in holders}
            used = {domains.get(bf, bf) for bf in holders if bf in alive}
            chosen, n_shared = targets(min(len(missing), budget), stripe.size, room, set(holders), used, domains)
            shared += n_shared
            for index, target in zip(missing, chosen, strict=False):
                gen = self.s.catalog.new_gen()
                spec = stripe_spec(self.s.catalog, stripe, index, addresses, alive)
                orders.append((target, stripe.namespace, manager_pb2.CopyOrder(
                    key=stripe.members[index].to_pb(), gen=gen, stripe=spec)))
                with self.s.lock:
                    self.s.stripe_work.rebuilding[(stripe.id, index)] = (target, gen, now + self.s.stripe_work.timeout)
                budget -= 1
        # Encode: new stripes from chunks no stripe protects.
        waited: set[IndexKey] = set()
        for ns, candidates in self.s.catalog.unstriped(namespaces, alive).items():
            unstriped += len(candidates)
            red = namespaces[ns]
            candidates = [c for c in candidates if c[0] not in pending]
            short_ok = all(ik in self.s.stripe_work.waited for ik, _ in candidates)
            for data in group(candidates, red.k, domains, short_ok):
                if budget < red.m:
                    break
                members = {ik: hs for ik, hs in candidates}
                taken = {bf for ik in data for bf in members[ik]}
                used = {domains.get(members[ik][0], members[ik][0]) for ik in data}
                size = max(ik[1].length for ik in data)
                chosen, n_shared = targets(red.m, size, room, taken, used, domains)
                shared += n_shared + len(data) - len(used)
                if len(chosen) < red.m:
                    waited.update(data)
                    if not self._narrow_warned:
                        self._narrow_warned = True
                        log.warning("namespace %s (%s): not enough live benefactors with room for a stripe's %d "
                                    "members on distinct benefactors (%d alive); its new versions stay "
                                    "unprotected until there are", ns, red, red.k + red.m, len(alive))
                    continue  # not enough benefactors holding none of its members: next round
                sid = self.s.catalog.new_stripe_id()
                keys = tuple(ik[1] for ik in data)
                stripe = Stripe(sid, ns, red.k, red.m, size, keys + tuple(ABSENT for _ in range(red.k - len(keys)))
                                + tuple(ABSENT for _ in range(red.m)))
                new = NewStripe(ns, red.k, red.m, size, keys, now + self.s.stripe_work.timeout)
                for j, target in enumerate(chosen):
                    new.targets[red.k + j] = (target, self.s.catalog.new_gen())
                # One builder fetches the data members once, makes all the parity, keeps its own and
                # hands the others on: K fetches and M-1 transfers, not M x K fetches.
                builder, gen = new.targets[red.k]
                order = manager_pb2.CopyOrder(gen=gen, stripe=stripe_spec(self.s.catalog, stripe, red.k, addresses,
                                                                         alive))
                for j, target in enumerate(chosen[1:], 1):
                    order.ship.add(index=red.k + j, benefactor_id=target, address=addresses[target],
                                   gen=new.targets[red.k + j][1])
                orders.append((builder, ns, order))
                for target in chosen[1:]:
                    with self.s.lock:
                        self.s.registry.note_used(target, size)
                with self.s.lock:
                    self.s.stripe_work.new[sid] = new
                budget -= red.m
            waited.update(ik for ik, _ in candidates)
        with self.s.lock:
            self.s.stripe_work.waited = waited
            self.s.stripe_work.shared_domains = shared
            self.s.stripe_work.unprotected = unstriped + missing_members
            self.s.stripe_work.missing = missing_members
            for target, ns, order in orders:
                self.s.orders.push(target, ns, build=[order])
                self.s.registry.note_used(target, order.stripe.size)
        self.s.metrics.shared_domains.set(self.s.replicator.shared_domains + shared)
        self.s.metrics.stripes.set(self.s.catalog.stripe_count())
        if shared and not self._domains_warned:
            self._domains_warned = True
            log.warning("not enough failure domains: %d stripe members share a domain with another member of their "
                        "stripe (label benefactors with --domain, or add benefactors in other domains)", shared)
        if orders:
            log.info("stripes: %d members ordered (%d stripes short of members)", len(orders), len(health))

    def repair(self) -> None:
        """One round of replication and rebuild: order copies of chunks short of their namespace's
        copies (new versions, or a benefactor gone), from a live holder to live benefactors."""
        self.repair_stripes()
        copies = self.s.catalog.replicated_namespaces()
        if not copies:
            self.s.unprotected = 0
            self.s.metrics.unprotected.set(self.s.stripe_work.unprotected)
            return
        with self.s.lock:
            now, alive, free, addresses, domains = self.s.live_view()
        needs = self.s.catalog.under_protected(copies, alive)
        self.s.unprotected = len(needs)
        self.s.metrics.unprotected.set(len(needs) + self.s.stripe_work.unprotected)
        if not needs:
            return
        with self.s.lock:
            self.s.replicator.expire(now)
            plan = self.s.replicator.plan(needs, copies, free, domains)
            shared = self.s.replicator.shared_domains
        self.s.metrics.shared_domains.set(shared)
        if shared and not self._domains_warned:
            self._domains_warned = True
            log.warning("not enough failure domains: %d copies share a domain with another copy of their chunk "
                        "(label benefactors with --domain, or add benefactors in other domains)", shared)
        for ik, source, target in plan:
            gen = self.s.catalog.new_gen()
            with self.s.lock:
                self.s.orders.push(target, ik[0], copy=[(ik[1], gen, source, addresses[source])])
                self.s.registry.note_used(target, ik[1].length)
                self.s.replicator.started(ik, target, gen, now)
        if plan:
            log.info("repair: %d chunks short of their copies, %d copies ordered", len(needs), len(plan))
