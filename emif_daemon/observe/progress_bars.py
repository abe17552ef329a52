"""Live progress bars on a terminal (one per stage); log lines print above them."""

from __future__ import annotations

import logging
import shutil
import sys
import threading
from collections.abc import Callable, Mapping
from typing import Never, Protocol, TextIO

from tqdm import tqdm


class StageCounters(Protocol):
    """What a bar needs of a stage's counters (the engine's StageStats has them)."""

    @property
    def done(self) -> int: ...
    @property
    def failed(self) -> int: ...
    @property
    def skipped(self) -> int: ...
    @property
    def pending(self) -> int: ...
    @property
    def busy(self) -> int: ...


class TqdmHandler(logging.StreamHandler[TextIO]):
    """Writes log lines through tqdm so they do not tear the bars."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            tqdm.write(self.format(record), file=sys.stderr)
        except Exception:
            self.handleError(record)


class TerminalProgress:
    """Redraws a bar per stage from the engine's counters twice a second."""

    def __init__(
        self, stats: Callable[[], Mapping[str, StageCounters]], interval: float = 0.5
    ) -> None:
        self.stats = stats
        self.interval = interval
        self._bars: dict[str, tqdm[Never]] = {}  # bars without an iterable
        self._seen: dict[str, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="progress", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self.refresh()

    def refresh(self) -> None:
        for position, (name, st) in enumerate(self.stats().items()):
            finished = st.done + st.failed + st.skipped
            bar = self._bars.get(name)
            if bar is None:
                bar = tqdm(
                    desc=f"{name:<8}",
                    total=finished + st.pending,
                    position=position,
                    unit="img",
                    file=sys.stderr,
                    # A terminal that reports no width (some ptys) gets 100 columns.
                    ncols=shutil.get_terminal_size((100, 20)).columns,
                    nrows=shutil.get_terminal_size((100, 20)).lines,
                    leave=True,
                )
                self._bars[name] = bar
                self._seen[name] = 0
            bar.total = finished + st.pending + (1 if st.busy else 0)
            bar.set_postfix_str(f"failed {st.failed}" if st.failed else "", refresh=False)
            bar.update(finished - self._seen[name])
            self._seen[name] = finished
            bar.refresh()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(2)
        self.refresh()
        for bar in self._bars.values():
            bar.close()
