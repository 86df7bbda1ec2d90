"""The order image work runs in: whoever has waited the longest for the size of its image.

Work waits in one queue per *size class* (the request's image in powers of four of pixels: up to
64x64, up to 128x128, up to 256x256, ...), first come first served within a class. The next job
goes to the request that has waited the most *for its size*: the pixels of work the queue has
handed out since the request's first job came here, divided by the pixels of the request's own
image (highest response ratio next). A request's claim grows while it waits, so none waits
without bound, and it grows faster the smaller the image: a small request waiting behind a
large one overtakes it as soon as it has waited a small fraction as long. Under a steady load
every size ends up waiting about the same multiple of its own work; with ``n`` requests
waiting that multiple stays within about ``2 n`` (``tests/test_scheduling.py`` drives the load
mix of ``bench/load.py`` through the queue to check it). Counted in pixels of work rather than
in seconds, the order is the same on a fast machine and on a busy one.
"""

from __future__ import annotations

import heapq
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from itertools import count
from typing import Generic, TypeVar

Item = TypeVar("Item")

# Up to 64x64 pixels is class 0; every class above holds four times the pixels.
SMALLEST_CLASS_PIXELS = 64 * 64


def size_class(pixels: int) -> int:
    """0 for up to 64x64 pixels, 1 up to 128x128, 2 up to 256x256, and so on."""
    excess = -(-max(1, pixels) // SMALLEST_CLASS_PIXELS)  # in units of the smallest class
    return ((excess - 1).bit_length() + 1) // 2


@dataclass(frozen=True, eq=False)  # one per request, told apart by identity
class Ticket:
    """What the schedulers know of the request that a piece of work is for."""

    pixels: int  # of the request's whole image: its size class and what its wait is measured by
    arrived: float  # when the request came: its place within the class

    @property
    def size_class(self) -> int:
        return size_class(self.pixels)


@dataclass(eq=False)  # told apart by identity: items may be arrays
class _Entry(Generic[Item]):
    item: Item
    size_class: int
    pixels: int  # of this piece of work
    key: tuple[float, int]  # (the request's arrival, then the order of pushing)
    first_seen: int  # the queue's work when the request's first job came
    image_pixels: int  # of the request's whole image

    def __lt__(self, other: _Entry) -> bool:
        return self.key < other.key


class FairQueue(Generic[Item]):
    """Items queued by size class; the next one is for the request that has waited the most
    pixels of work per pixel of its own image.

    Within a class, the item of the request that arrived first goes first, so a request's
    later steps do not queue behind the first steps of requests that came after it.
    """

    def __init__(self) -> None:
        self._queues: dict[int, list[_Entry[Item]]] = {}  # a heap per class
        self.work = 0  # pixels of work handed out so far: the clock that waits are counted in
        # The work handed out when each request's first job came; forgotten with the request.
        self._first_seen: weakref.WeakKeyDictionary[Ticket, int] = weakref.WeakKeyDictionary()
        self._order = count()
        self._length = 0

    def __len__(self) -> int:
        return self._length

    def push(self, item: Item, ticket: Ticket, pixels: int) -> None:
        """Queue ``item``, work on ``pixels`` pixels for the request of ``ticket``."""
        first_seen = self._first_seen.setdefault(ticket, self.work)
        entry = _Entry(
            item,
            ticket.size_class,
            max(1, pixels),
            (ticket.arrived, next(self._order)),
            first_seen,
            max(1, ticket.pixels),
        )
        heapq.heappush(self._queues.setdefault(ticket.size_class, []), entry)
        self._length += 1

    def waited(self, ticket: Ticket) -> float:
        """How long the request of ``ticket`` has waited here for its size: pixels of work
        handed out since its first job came, per pixel of its image (0 if it never came)."""
        first_seen = self._first_seen.get(ticket)
        if first_seen is None:
            return 0.0
        return (self.work - first_seen) / max(1, ticket.pixels)

    def pop(self, largest_class: int | None = None) -> Item | None:
        """The next item (only from classes up to ``largest_class`` if given)."""
        heads = [
            queue[0]
            for size_class, queue in self._queues.items()
            if queue and (largest_class is None or size_class <= largest_class)
        ]
        if not heads:
            return None
        # Equal claims (nothing handed out yet) go to the smaller image.
        chosen = max(heads, key=lambda entry: (self._claim(entry), -entry.size_class))
        heapq.heappop(self._queues[chosen.size_class])
        return self._take(chosen)

    def take(self, wanted: Callable[[Item], bool], limit: int) -> list[Item]:
        """Up to ``limit`` items that are ``wanted``, of any class, earliest request first."""
        if limit <= 0:
            return []
        found = sorted(
            entry for queue in self._queues.values() for entry in queue if wanted(entry.item)
        )[:limit]
        for entry in found:
            queue = self._queues[entry.size_class]
            queue.remove(entry)
            heapq.heapify(queue)
        return [self._take(entry) for entry in found]

    def drain(self) -> list[Item]:
        """Every item, removed."""
        items = [entry.item for queue in self._queues.values() for entry in queue]
        self._queues.clear()
        self._length = 0
        return items

    def _claim(self, entry: _Entry[Item]) -> float:
        return (self.work - entry.first_seen) / entry.image_pixels

    def _take(self, entry: _Entry[Item]) -> Item:
        self.work += entry.pixels
        self._length -= 1
        return entry.item
