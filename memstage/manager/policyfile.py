"""Namespace policies given as a setting (`policies`, JSON), applied at every start of the manager:
how the Helm chart and other deployments set quotas and persistence per namespace without a
command after the install. `memstage policy` still changes them until the next start."""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

from memstage.errors import SettingError
from memstage.paths import check_namespace
from memstage.redundancy import Redundancy
from memstage.units import parse_size

_COUNTS = ("persist_every", "keep_versions", "pfs_keep", "quota_sessions")
FIELDS = (*_COUNTS, "quota_memory", "redundancy", "keep_deleted")


def parse_policies(text: str) -> dict[str, dict[str, Any]]:
    """{namespace: {field: value}} from the setting's JSON; SettingError naming what is wrong."""
    if not text.strip():
        return {}
    try:
        raw = json.loads(text)
    except ValueError as e:
        raise SettingError(f"policies: not JSON ({e})") from None
    if not isinstance(raw, dict):
        raise SettingError('policies: a JSON object of namespaces, e.g. {"run42": {"quota_memory": "8GiB"}}')
    out: dict[str, dict[str, Any]] = {}
    for ns, fields in raw.items():
        try:
            check_namespace(ns)
        except ValueError as e:
            raise SettingError(f"policies: {e}") from None
        if not isinstance(fields, dict):
            raise SettingError(f"policies: {ns}: a JSON object of policy fields")
        parsed: dict[str, Any] = {}
        for name, value in fields.items():
            where = f"policies: {ns}.{name}"
            if name in _COUNTS:
                least = 1 if name == "keep_versions" else 0
                if not isinstance(value, int) or isinstance(value, bool) or value < least:
                    raise SettingError(f"{where}: a whole number, {least} or more")
                parsed[name] = value
            elif name == "quota_memory":
                try:
                    parsed[name] = value if isinstance(value, int) and value >= 0 else parse_size(str(value))
                except ValueError as e:
                    raise SettingError(f"{where}: {e}") from None
            elif name == "redundancy":
                parsed[name] = str(Redundancy.parse(str(value), where))
            elif name == "keep_deleted":
                if not isinstance(value, bool):
                    raise SettingError(f"{where}: true or false")
                parsed[name] = value
            else:
                raise SettingError(f"{where}: not a policy field ({', '.join(sorted(FIELDS))})")
        out[ns] = parsed
    return out


def apply_policies(catalog: Any, policies: dict[str, dict[str, Any]]) -> None:
    """Set each named namespace's policy: the fields given over what it has."""
    for ns, fields in policies.items():
        catalog.set_policy(ns, replace(catalog.policy(ns), **fields))
