"""How many small deliveries a sync keeps in flight: found while it runs, not set by hand (issue 30).

The best width depends on where the relay runs. On a loopback stack with 2 cores the CPU is the limit, and which
width delivers most changes from run to run (plain's best thread count was 8, 16 or 32 in four bench runs; 16 was
within 10% of the best in each, 8 and 32 not). In Azure every request crosses the network to the gateway and to
storage, and more files in flight deliver more. So a sync measures: files delivered per second over an epoch of
deliveries at one width, then at the next width of the ladder (8, 16, 32, 64, at most the pool's bound,
`SYNC_CONCURRENCY` x 2). It starts at 16, in the middle, so one step either way reaches the best of those runs. A
wider width is kept when it delivered more per second by more than MARGIN (an epoch's noise does not widen the run),
a narrower one when it delivered at least as much (fewer in flight cost less memory and fewer connections); the
climb goes on in the direction that paid, else it tries the other side once and settles. Settled, it looks again
every RECHECK epochs, since a shared machine's load changes. Below 8 it never goes by itself: `SYNC_CONCURRENCY`
under 4 is the way to send fewer (a small instance, a throttled account).

After a change of width the deliveries started before it end unmeasured: going narrower, those beyond the new width
end with nothing started behind them, and counting them made the narrower width look faster than it is.

Pure and single-threaded: a clock in, a width out (`shared.sync.Window` calls it under its lock).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

log = logging.getLogger(__name__)

LADDER = (8, 16, 32, 64)
START = 16  # the first width measured, once a delivery got through (the start window is sync.START_WINDOW). Was 8
# until the fourth session of 12-07: where plain's best was 32, each step up paid about 10%, within an epoch's noise,
# and the climb from 8 rarely saw both (0.85x plain at its best over 10,000; tests/test_pace.py).
MARGIN = 0.10  # a wider width must deliver this much more per second to be taken on the first climb of a run
RECHECK_MARGIN = 0.20  # and this much at a recheck once the run has settled. An epoch's files/s swings about 15% with
# a shared machine's load, and each recheck compares two epochs: with 10% there, a swing took most long runs on a flat
# machine to 32 or 64 by luck (tests/test_pace.py), and each small delivery in flight holds about 0.3 MiB, so a long
# run's peak memory followed its rechecks' luck. The first climb keeps 10%: every run makes it, short or long, and a
# wider width that pays 10-20% (plain's 16 threads over its 8 in one bench run) is taken. A link where width pays
# (latency-bound: twice the files per second for twice the width) passes either.
MIN_EPOCH = 100  # deliveries measured at one width, at least; 4 x the width when that is more
RECHECK = 12  # epochs at a settled width before its neighbours are tried again


class Pace:
    """A hill climb over `LADDER` capped at `top`. `ended()` once per small delivery that ended; it answers the new
    width when it changes. Each epoch first lets the larger of the old and the new width end unmeasured (those started
    before), then measures MIN_EPOCH of them (4 x the width when that is more)."""

    def __init__(self, top: int, clock: Callable[[], float] = time.monotonic, start: int = START) -> None:
        self.widths = sorted({min(w, top) for w in LADDER})
        self.clock = clock
        self.base = max((i for i, w in enumerate(self.widths) if w <= start), default=0)  # the width to beat
        self.base_rate = 0.0
        self.trying = self.base  # the width in force
        self.step = 0  # +1 / -1 while a neighbour is tried, 0 while the base is measured
        self.turned = False  # this climb tried the other side already, or knows it is worse
        self.settled = 0  # epochs measured at the base since it was settled
        self.rechecking = False  # settled once: a wider width must pay RECHECK_MARGIN from now on
        self._begin(self.width)

    @property
    def width(self) -> int:
        return self.widths[self.trying]

    def _begin(self, before: int) -> None:
        # The deliveries started at the width `before` end first, unmeasured: going narrower, those still in flight
        # end with none started behind them (an epoch counting them would find the narrower width faster than it
        # is); going wider, the new ones fill the pipeline.
        self._skip = max(before, self.width)
        self._count = 0
        self._since = 0.0

    def ended(self) -> int | None:
        """One small delivery ended: the new width when it changed, else None."""
        if self._skip:
            self._skip -= 1
            if not self._skip:
                self._since = self.clock()
            return None
        self._count += 1
        if self._count < max(MIN_EPOCH, 4 * self.width):
            return None
        elapsed = self.clock() - self._since
        if elapsed <= 0:  # a clock that did not move tells nothing: measure again
            self._count, self._since = 0, self.clock()
            return None
        old, before, rate = self.trying, self.width, self._count / elapsed
        log.debug("pace: %.1f files/s at %d in flight", rate, before)
        self._measured(rate)
        self._begin(before)
        return self.width if self.trying != old else None

    def _measured(self, rate: float) -> None:
        """An epoch's files per second at the width in force: the next width to measure."""
        if self.step == 0:  # the base, measured (again)
            self.base_rate = rate
            if self.settled and self.settled < RECHECK:
                self.settled += 1
                return
            self.settled, self.turned = 0, False
            if not self._try(+1):
                self._turn()
            return
        if self._paid(rate):  # the new base; the other side is worse, so on this way
            self.base, self.base_rate, self.turned = self.trying, rate, True
            if not self._try(self.step):
                self._settle()
        elif not self.turned:  # the first neighbour tried is not better: the other one
            self._turn()
        else:
            self._settle()

    def _paid(self, rate: float) -> bool:
        """Whether the width tried beats the base: wider by more than the margin (MARGIN on the first climb,
        RECHECK_MARGIN after), narrower by being as fast."""
        margin = RECHECK_MARGIN if self.rechecking else MARGIN
        return rate > self.base_rate * (1 + margin) if self.step > 0 else rate >= self.base_rate

    def _turn(self) -> None:
        self.turned = True
        if not self._try(-1):
            self._settle()

    def _try(self, step: int) -> bool:
        i = self.base + step
        if not 0 <= i < len(self.widths):
            return False
        self.trying, self.step = i, step
        return True

    def _settle(self) -> None:
        self.trying, self.step, self.settled, self.rechecking = self.base, 0, 1, True
