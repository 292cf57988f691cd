"""Which checkpoint a committed file belongs to, from its path alone (pure: no I/O).

Training and HPC codes write each checkpoint under a new name, so the unit the policies count
(persist every N-th, keep the K newest) is the checkpoint, not the version of a path:

- a per-step directory: the shallowest directory whose name is a step name (`step_100`,
  `step-100`, `iter_0000100`, `global_step100`, `checkpoint-100`, `ckpt_7`, `epoch3`, or a bare
  number as Orbax writes) makes every file below it part of that step's checkpoint. Its series is
  the directory it sits in plus the step word, so `run/step_1`, `run/step_2`, ... are one series;
- a step number in a file name (`rank0_step100.npy`, `model_iter_20.pt`): the files of one
  directory with the same step word and number are one checkpoint;
- a version a writer committed inside `Client.checkpoint(step)` belongs to that step of the
  namespace's explicit series, whatever its path;
- any other file is its own series, each version one checkpoint (an overwritten file), unless a
  step series lives in its directory or above it: then it is a pointer or side file of that
  series (Megatron's `latest_checkpointed_iteration.txt`, a `latest` file) and belongs to the
  series' newest checkpoint when it is committed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_WORDS = r"(?:global_step|step|iteration|iter|checkpoint|ckpt|epoch)"
_STEP_DIR = re.compile(rf"^(?P<word>{_WORDS})?[_\-]?(?P<n>\d+)$", re.I)
_STEP_FILE = re.compile(rf"(?:^|[_\-.])(?P<word>{_WORDS})[_\-]?(?P<n>\d+)(?=[_\-.]|$)", re.I)


@dataclass(frozen=True, slots=True)
class StepName:
    """A path's place in a step series: the series (a directory and a step word) and the step."""

    series: str  # e.g. "/run42/step" (directory + "/" + word; "#" for a bare number)
    step: int
    directory: str  # the step directory ("/run42/step_100"), or the directory of a file with a step


EXPLICIT = "@"  # the series of checkpoints a writer names itself (Client.checkpoint), one per namespace


def step_of(path: str) -> StepName | None:
    """The step series and number of a normalised file path ('/a/b/c'), or None."""
    parts = path.strip("/").split("/")
    for depth, name in enumerate(parts[:-1]):
        m = _STEP_DIR.match(name)
        if m is not None:
            parent = "/" + "/".join(parts[:depth])
            word = (m.group("word") or "#").lower()
            return StepName(f"{parent.rstrip('/')}/{word}", int(m.group("n")), parent.rstrip("/") + "/" + name)
    m = _STEP_FILE.search(parts[-1])
    if m is not None:
        parent = "/" + "/".join(parts[:-1])
        return StepName(f"{parent.rstrip('/')}/{m.group('word').lower()}", int(m.group("n")), parent)
    return None


def series_dir(series: str) -> str:
    """The directory a step series lives in ('/run42/step' -> '/run42', '/step' -> '/')."""
    return series.rsplit("/", 1)[0] or "/"


def under(path: str, directory: str) -> bool:
    """`path` lies in `directory` or below it."""
    return directory == "/" or path == directory or path.startswith(directory.rstrip("/") + "/")
