"""One writer per key of a batch output: a run claims the output (or its shard of it) while it writes.

Overlapping runs on one output used to predict the same keys twice (an unsharded ``predict-batch``
beside ``--shard 0/2`` and ``--shard 1/2`` gave 3,082 rows for 1,797 inputs): each read the keys done
before the others had committed theirs. Now a run holds a lock file ``s<i>of<n>.lock`` in the output's
claims folder (``OutputLayout.claims_dir``) from reading the done keys until its last part (and, for an
unsharded run, the consolidated file) is written:

* shards ``i != j`` of the same count ``n`` split the keys between them, so they run side by side
  (the flow's parallel shard tasks, processes, machines sharing the folder);
* anything else on the same output conflicts: an unsharded run or a consolidation with any writer,
  the same shard twice, shards of different counts. The later run fails at once with ``OutputBusy``
  (nothing written), and can be rerun when the other has finished: it then skips what that one did.

Claims are taken under a short lock of the claims folder, so two runs starting together cannot both
see the other as absent. A killed run's locks are released by the kernel.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from visionloop.locks import exclusive, is_held, release, try_lock

_CLAIM_RE = re.compile(r"^s(\d+)of(\d+)\.lock$")
_FOLDER_LOCK = "claims.lock"


class OutputBusy(ValueError):
    """Another run is writing the same keys of this output."""


def _lock_name(shard: tuple[int, int]) -> str:
    return f"s{shard[0]:03d}of{shard[1]:03d}.lock"


def _conflict(mine: tuple[int, int], other: tuple[int, int]) -> bool:
    """Whether two writers may write the same key: unless they are different shards of one split."""
    return mine[1] != other[1] or mine[0] == other[0]


def _describe(shard: tuple[int, int]) -> str:
    return "an unsharded run" if shard[1] == 1 else f"shard {shard[0]}/{shard[1]}"


@contextmanager
def claim(claims_dir: Path, shard: tuple[int, int] | None, output: Path) -> Iterator[None]:
    """Hold the claim of ``shard`` (None: the whole output) on ``output`` for the block, or raise ``OutputBusy``."""
    mine = shard or (0, 1)
    with exclusive(claims_dir / _FOLDER_LOCK, wait_s=None, what=f"the claims of {output}"):
        for path in sorted(claims_dir.glob("s*of*.lock")):
            match = _CLAIM_RE.match(path.name)
            if match is None or path.name == _lock_name(mine):
                continue
            other = (int(match.group(1)), int(match.group(2)))
            if _conflict(mine, other) and is_held(path):
                raise OutputBusy(f"{output} is being written by {_describe(other)}; {_describe(mine)} would write "
                                 "the same images twice. Rerun it when that run has finished (it skips what is done).")
        fd = try_lock(claims_dir / _lock_name(mine))
        if fd is None:
            raise OutputBusy(f"{output} is being written by another {_describe(mine)}; rerun it when that has finished")
    try:
        yield
    finally:
        release(fd)
