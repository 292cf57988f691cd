"""Operators' calls: access tokens (created, revoked, listed), namespace policies and checkpoint marks."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from memstage import auth
from memstage.errors import InvalidArgument, NotFound, SettingError
from memstage.manager.catalog import Policy
from memstage.manager.state import State
from memstage.paths import check_namespace
from memstage.redundancy import Redundancy

log = logging.getLogger(__name__)


def token_grants(given: Mapping[str, str]) -> dict[str, str]:
    """A new token's grants, checked: namespaces (or * for admin) and their modes."""
    grants = {ns if ns == "*" else check_namespace(ns): mode for ns, mode in given.items()}
    if not grants:
        raise InvalidArgument("a token needs at least one grant (a namespace, or * for an admin token)")
    try:
        return auth.check_grants(grants)
    except SettingError as e:
        raise InvalidArgument(str(e)) from None


class Admin:
    def __init__(self, state: State) -> None:
        self.s = state

    def create_token(self, given: Mapping[str, str], note: str) -> auth.Token:
        grants = token_grants(given)
        token = auth.Token.new()
        self.s.catalog.add_token(token.id, token.digest(), grants, note)
        log.info("token %s created: %s", token.id, auth.describe(grants))
        return token

    def revoke_token(self, token_id: str) -> None:
        if not self.s.catalog.revoke_token(token_id):
            raise NotFound(f"token {token_id}: no such token")
        # The grants it was given are refused by every benefactor as soon as this order reaches it
        # (pushed with a wake); a benefactor registering later is told at registration.
        with self.s.lock:
            for record in self.s.registry.records():
                self.s.orders.push(record.id, "", revoked=[token_id])
        log.info("token %s revoked", token_id)

    def policy(self, namespace: str, given: dict[str, Any]) -> Policy:
        """The namespace's policy, with the fields given changed first."""
        current = self.s.catalog.policy(namespace)
        if given:
            if "redundancy" in given:
                try:
                    given["redundancy"] = str(Redundancy.parse(given["redundancy"]))
                except SettingError as e:
                    raise InvalidArgument(str(e)) from None
            current = replace(current, **given)
            self.s.catalog.set_policy(namespace, current)
            log.info("policy of namespace %s: %s", namespace, current)
        return current

    def mark_checkpoint(self, namespace: str, begin: int | None, end: bool) -> tuple[int | None, int | None]:
        """Begin a step's checkpoint, or end the open one: (the checkpoint open before, the one open now)."""
        if (begin is not None) == end:
            raise InvalidArgument("a checkpoint mark either begins a step or ends the open checkpoint")
        if begin is not None:
            previous = self.s.catalog.begin_checkpoint(namespace, begin)
            log.info("namespace %s: checkpoint %d begins", namespace, begin)
        else:
            previous = self.s.catalog.end_checkpoint(namespace)
            log.info("namespace %s: checkpoint %s ends", namespace, previous)
        return previous, self.s.catalog.open_checkpoint(namespace)
