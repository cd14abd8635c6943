"""Step messages over torch.distributed itself: rank 0 broadcasts, the others loop.

The transport for a gang of plain processes (torchrun, tests); on Ray the replica calls
its rank actors instead (serve/deployments/denoiser_ranks.py). Either way the step's own
collectives keep the ranks in lockstep.
"""

from __future__ import annotations

import torch.distributed as dist

from engine.parallel.rank_group_executor import RankMirror, StepMessage


class CollectivePeers:
    """Rank 0's side: ``submit`` broadcasts the message; the step itself is the barrier."""

    def submit(self, message: StepMessage) -> None:
        dist.broadcast_object_list([message], src=0)

    def wait(self, handle: None) -> None:
        pass

    def close(self) -> None:
        """Tell the other ranks' loops to return."""
        dist.broadcast_object_list([None], src=0)


def run_rank_mirror(mirror: RankMirror) -> None:
    """Ranks 1..N-1: apply rank 0's messages until it closes the loop."""
    while True:
        box: list[StepMessage | None] = [None]
        dist.broadcast_object_list(box, src=0)
        if box[0] is None:
            return
        mirror.apply(box[0])
