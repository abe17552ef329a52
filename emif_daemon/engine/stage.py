"""The contract between the engine and the stages (docs/architecture.md#stages).

A stage says what work there is (`discover`, read-only), does one item under a claim
(`run`), and may tidy its inputs first (`maintain`: the generate stage's intake of prompts
files). It gets a `StageContext` — the root, who we are, the file server's clock — and its
own config section; it never sees the daemon's wiring.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Mapping, Sized
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from emif_daemon.errors import ClaimLost, Shutdown
from emif_daemon.events import EventSink, no_events
from emif_daemon.logs import get_logger
from emif_daemon.servers.resemblance import LookCache
from emif_daemon.share.claims import Claim, ClaimStore
from emif_daemon.share.clock import ServerClock
from emif_daemon.share.identity import HostIdentity
from emif_daemon.share.layout import Layout
from emif_daemon.share.watch import Settler


@dataclass(frozen=True)
class StageContext:
    """What every stage may use; frozen, so a stage cannot rewire the daemon."""

    layout: Layout
    identity: HostIdentity
    clock: ServerClock
    settler: Settler
    events: EventSink = no_events
    relist_s: float = 0.0  # watch.listing_cache_s: how long a changed folder is re-listed
    # What the content check saw of images this process made, by sha256: the upscale stage
    # of the same host need not decode its source again.
    looks: LookCache = field(default_factory=LookCache)

    @property
    def host(self) -> str:
        return self.identity.host


@dataclass(frozen=True)
class Item:
    """One unit of work; done when every output exists."""

    key: str
    outputs: tuple[Path, ...]
    source: Path | None = None
    data: Any = None  # the stage's own description of the item (a planned generation)
    batch: str | None = None  # the prompts file it belongs to, if any

    def done(self) -> bool:
        return all(p.exists() for p in self.outputs)


@dataclass
class Discovery:
    """What a stage found: items to try, and how many wait for something else.

    `items` may be lazy (a generator): the engine takes the first it can claim and stops,
    so a batch of 100 000 items costs a round the items it looks at, not all of them.
    """

    items: Iterable[Item] = field(default_factory=list)
    waiting: int = 0  # inputs not settled yet, or not ready for another reason
    count: int | None = None  # how many items are open, where `items` is lazy

    def open_count(self) -> int:
        if self.count is not None:
            return self.count
        return len(self.items) if isinstance(self.items, Sized) else 0


@dataclass(frozen=True)
class StageResult:
    """What a finished item reports: logged with `item_done`, sent to listeners, metered."""

    output: str
    server_seconds: float | None = None
    details: Mapping[str, Any] = field(default_factory=dict)

    def fields(self) -> dict[str, Any]:
        extra = {} if self.server_seconds is None else {"server_seconds": self.server_seconds}
        return {"output": self.output, **extra, **self.details}


class Work:
    """What a stage may do with the claim it runs under."""

    def __init__(self, store: ClaimStore, claim: Claim, stop: threading.Event) -> None:
        self._store = store
        self._claim = claim
        self._stop = stop

    def check(self) -> None:
        """Unwind at shutdown between steps; raises Shutdown or ClaimLost."""
        if self._stop.is_set() or self._claim.abandoned:
            raise Shutdown
        if self._claim.lost:
            raise ClaimLost(self._claim.item)

    def commit(self, publish: Callable[[], object], **record: Any) -> None:
        """Publish the output and mark the claim done, or raise if the claim is not ours.

        `publish` must only ever rename into names that do not exist yet (FileExistsError
        otherwise), so a host that lost its claim can never replace another's output.
        """
        claim = self._claim
        if not self._store.commit(claim, publish, **record):
            if claim.abandoned:
                raise Shutdown
            if claim.published:
                get_logger().warning("published_after_claim_lost", item=claim.item)
            raise ClaimLost(claim.item)


class Stage(Protocol):
    name: str
    priority: int  # a shared server serves the higher priority first (downstream stages)
    workers: int  # worker threads; >1 lets one item's own work hide behind another's request

    def unavailable(self) -> str | None: ...
    def maintain(self) -> None: ...
    def discover(self) -> Discovery: ...
    def run(self, item: Item, work: Work) -> StageResult: ...
    def wait_available(self, stop: threading.Event) -> None: ...
    def close(self) -> None: ...


class StageBase:
    """Defaults for a Stage's optional parts: always available, nothing to maintain, wait
    for or close."""

    workers = 1

    def unavailable(self) -> str | None:
        return None

    def maintain(self) -> None:
        """Tidy the stage's inputs before discovery (may write to the share)."""

    def wait_available(self, stop: threading.Event) -> None:
        """Block until the stage can work again after ServerUnavailable (or `stop` is set)."""

    def close(self) -> None:
        """Release what the stage holds (a child process) at shutdown."""
