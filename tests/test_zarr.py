"""zarr v3 through a memstage URL, as its users write it: fsspec opens the URL asynchronously and
zarr wraps the synchronous filesystem itself."""

from __future__ import annotations

import numpy as np
import zarr


def test_zarr_v3_group_and_array_round_trip_through_the_url(local_cluster):
    cluster = local_cluster(benefactors=2)
    url = f"memstage://{cluster.manager_address}/default/run/step_10.zarr"
    group = zarr.open_group(url, mode="w")  # was: SettingError: unknown setting 'asynchronous'
    data = np.arange(120_000, dtype="f8").reshape(300, 400)
    array = group.create_array("weights", shape=data.shape, chunks=(64, 64), dtype=data.dtype)
    array[:] = data
    group.attrs["step"] = 10
    again = zarr.open_group(url, mode="r")
    assert again.attrs["step"] == 10
    assert np.array_equal(again["weights"][:], data)
    assert np.array_equal(again["weights"][100:110, 5:7], data[100:110, 5:7])
