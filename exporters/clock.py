"""Seconds per named stage, in the order the stages ran: the export pipeline's stages and each format's build
stages, which the manifest's ``exporter`` entry records."""
from __future__ import annotations

import logging
import time


class StageClock:
    """``done(name)`` ends a stage begun when the previous one ended (or at construction); ``merge`` adds stages
    timed elsewhere (e.g. in lowering processes). Each stage is logged as it ends when ``log`` is given."""

    def __init__(self, log: logging.Logger | None = None, what: str = "export"):
        self.t0 = self._t = time.perf_counter()
        self.seconds: dict[str, float] = {}
        self._log, self._what = log, what

    def done(self, name: str) -> None:
        now = time.perf_counter()
        self._record(name, round(now - self._t, 2))
        self._t = now

    def merge(self, stages: dict[str, float]) -> None:
        for name, seconds in stages.items():
            self._record(name, seconds)
        self._t = time.perf_counter()

    @property
    def total(self) -> float:
        """Seconds since the clock started."""
        return round(time.perf_counter() - self.t0, 2)

    def _record(self, name: str, seconds: float) -> None:
        self.seconds[name] = seconds
        if self._log is not None:
            self._log.info(f"{self._what}: {name} {seconds}s")
