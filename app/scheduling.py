"""Fair shares between image sizes, so that small requests never queue behind large ones.

Work waits in one queue per *size class* (the request's image in powers of four of pixels: up to
64x64, up to 128x128, up to 256x256, ...), first come first served within a class. The next job
comes from the waiting class that has been given the fewest pixels of work so far. So while
large and small requests both wait, every class gets an equal share of the work, counted in
pixels; the class of small images needs little of its share and is served almost at once, and
large images still progress at their share however many small ones arrive. A class that has
been idle starts level with the others (start-time fair queueing), so it cannot save a share up.
"""

from __future__ import annotations

import heapq
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


@dataclass(frozen=True)
class Ticket:
    """What the schedulers know of the request that a piece of work is for."""

    pixels: int  # of the request's whole image: its size class
    arrived: float  # when the request came: its place within the class

    @property
    def size_class(self) -> int:
        return size_class(self.pixels)


@dataclass(eq=False)  # told apart by identity: items may be arrays
class _Entry(Generic[Item]):
    item: Item
    size_class: int
    pixels: int
    key: tuple[float, int]  # (the request's arrival, then the order of pushing)

    def __lt__(self, other: _Entry) -> bool:
        return self.key < other.key


class FairQueue(Generic[Item]):
    """Items queued by size class and taken in fair shares of pixels between the classes.

    Within a class, the item of the request that arrived first goes first, so a request's
    later steps do not queue behind the first steps of requests that came after it.
    """

    def __init__(self) -> None:
        self._queues: dict[int, list[_Entry[Item]]] = {}  # a heap per class
        self._served: dict[int, int] = {}  # pixels of work given to each class
        self._clock = 0  # the share of the class chosen last, when it was chosen
        self._order = count()
        self._length = 0

    def __len__(self) -> int:
        return self._length

    def push(self, item: Item, ticket: Ticket, pixels: int) -> None:
        """Queue ``item``, work on ``pixels`` pixels for the request of ``ticket``."""
        queue = self._queues.setdefault(ticket.size_class, [])
        if not queue:
            self._served[ticket.size_class] = max(
                self._served.get(ticket.size_class, 0), self._clock
            )
        key = (ticket.arrived, next(self._order))
        heapq.heappush(queue, _Entry(item, ticket.size_class, max(1, pixels), key))
        self._length += 1

    def pop(self, largest_class: int | None = None) -> Item | None:
        """The next item in fair order (only from classes up to ``largest_class`` if given)."""
        waiting = [
            size_class
            for size_class, queue in self._queues.items()
            if queue and (largest_class is None or size_class <= largest_class)
        ]
        if not waiting:
            return None
        chosen = min(waiting, key=lambda size_class: (self._served[size_class], size_class))
        self._clock = self._served[chosen]
        return self._take(heapq.heappop(self._queues[chosen]))

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

    def _take(self, entry: _Entry[Item]) -> Item:
        self._served[entry.size_class] += entry.pixels
        self._length -= 1
        return entry.item
