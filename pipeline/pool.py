"""A model stage's actors as the driver sees them: which one takes the next batch, and what losing
an actor costs the batches it held.

Ray restarts a model actor whose process died (`max_restarts=-1`) and reports every call it held,
the one it was running and those queued behind it, as `ActorUnavailableError` ("may or may not
have been executed"), as it does for an actor that is restarting. So an actor that answers so is
not picked until it answers a ping, and of the batches it held in that life, only the one it was
running counts the death: the oldest sent, since an actor runs its calls in the order they were
sent. The others go back to the queue as they were. An actor whose restarts ended for good
(`ActorDiedError`) is never picked again, unless every actor ended so (then its calls fail fast
and their inputs get error rows instead of waiting for ever).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any


class ActorPool:
    def __init__(self, actors: list):
        self.actors = actors
        self.load = [0] * len(actors)  # batches sent to each and not back
        self.life = [0] * len(actors)  # how often each was seen lost: a batch records the life it was sent to
        self.down: dict[int, Any] = {}  # actor -> its ping (ObjectRef), while it is restarting
        self.dead: set[int] = set()
        self.lost: dict[tuple[int, int], list[tuple[Any, Exception]]] = {}  # (actor, life) -> batches lost with it
        self.sent_count = 0

    def pick(self) -> int | None:
        """The least loaded actor that can take a batch now; None while every live one restarts."""
        self._poll()
        up = [i for i in range(len(self.actors)) if i not in self.down and i not in self.dead]
        if not up and len(self.dead) == len(self.actors):
            up = list(range(len(self.actors)))
        return min(up, key=self.load.__getitem__) if up else None

    def sent(self, batch: Any, index: int) -> None:
        batch.actor, batch.life, batch.order = index, self.life[index], self.sent_count
        self.sent_count += 1
        self.load[index] += 1

    def returned(self, batch: Any) -> None:
        self.load[batch.actor] -= 1

    def unavailable(self, batch: Any, exc: Exception) -> None:
        """The batch's actor was unavailable: keep it aside until its actor's life is settled."""
        index = batch.actor
        if index not in self.down:
            self.down[index] = self.actors[index].ready.remote()
            self.life[index] += 1
        self.lost.setdefault((index, batch.life), []).append((batch, exc))

    def ended(self, index: int) -> None:
        """The actor is gone for good (Ray will not restart it)."""
        self.dead.add(index)
        self.down.pop(index, None)

    def settled(self, inflight: Iterable[Any]) -> Iterator[tuple[Any, Exception, bool]]:
        """(batch, error, whether it counts as a death) for the lost batches of each actor life that
        has no batch in flight any more: the oldest sent counts, the others were only queued."""
        held = {(b.actor, b.life) for b in inflight if b.actor is not None}
        for key in [k for k in self.lost if k not in held]:
            batches = sorted(self.lost.pop(key), key=lambda lost: lost[0].order)
            for position, (batch, exc) in enumerate(batches):
                yield batch, exc, position == 0

    def _poll(self) -> None:
        import ray

        for index, ping in list(self.down.items()):
            if not ray.wait([ping], timeout=0)[0]:
                continue
            try:
                ray.get(ping)
                del self.down[index]
            except ray.exceptions.ActorUnavailableError:  # still restarting: ask again
                self.down[index] = self.actors[index].ready.remote()
            except ray.exceptions.RayActorError:
                self.ended(index)
