"""A version number beyond what the catalog can hold is a missing version, not an internal error."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry

from memstage.errors import NotFound
from memstage.manager.catalog import Catalog
from memstage.manager.service import ManagerService
from memstage.proto import manager_pb2
from memstage.settings import ManagerSettings


@pytest.mark.parametrize("version", [2**63, 2**64 - 1])
def test_lookup_of_a_version_out_of_range_is_not_found(tmp_path, version):
    svc = ManagerService(ManagerSettings(state=str(tmp_path)), Catalog(str(tmp_path)), CollectorRegistry())
    with pytest.raises(NotFound, match=f"no version {version}"):  # was: OverflowError, INTERNAL
        svc.Lookup(manager_pb2.LookupRequest(namespace="ns", path="/f", version=version), None)
