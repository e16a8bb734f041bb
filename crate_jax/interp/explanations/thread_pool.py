"""A function over items on a few threads: how interp waits on several LLM requests at once.

The work is I/O-bound (HTTP requests to an explainer or simulator server), so threads suffice and
the GIL costs nothing.
"""

from __future__ import annotations

import concurrent.futures
from collections.abc import Callable, Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")
R = TypeVar("R")


def map_in_threads(function: Callable[[T], R], items: Iterable[T], workers: int, *,
                   as_completed: bool = False) -> Iterator[R]:
    """`function(item)` for each item on up to `workers` threads, yielded in item order, or as
    each finishes with `as_completed` (so a caller can save each result at once).

    With one worker or one item it runs in the calling thread. An error is raised when its result
    is reached: in item order, the first failing item's; every item has run by then.
    """
    items = list(items)
    if workers <= 1 or len(items) <= 1:
        yield from map(function, items)
        return
    with concurrent.futures.ThreadPoolExecutor(min(workers, len(items))) as pool:
        futures = [pool.submit(function, item) for item in items]
        for future in concurrent.futures.as_completed(futures) if as_completed else futures:
            yield future.result()
