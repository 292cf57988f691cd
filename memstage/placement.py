"""What the writer's state machine and the transport under it both speak of: where a chunk goes
(a striping map's entry) and why a stream to a benefactor ended. Pure types, shared by the client
and by benefactors copying from each other."""

from __future__ import annotations

import enum
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Placement:
    """One entry of a striping map."""

    id: str
    address: str


class StreamEnd(enum.Enum):
    """Why a benefactor's stream ended, in the transport's words."""

    DONE = "done"  # closed after everything was acknowledged
    FULL = "full"  # the benefactor refused for lack of space
    REJECTED = "rejected"  # the benefactor refused a chunk's bytes (hash mismatch)
    FAILED = "failed"  # unreachable, crashed, cancelled
