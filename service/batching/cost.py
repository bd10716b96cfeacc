"""What a window costs to run, learnt from the forwards the batcher has timed.

A window's forward time is about a fixed part (kernel launches, per-forward overhead,
shared by the windows of one forward) plus a part per token. One global "seconds per
window" mixes 10-token and 256-token windows: while a long call runs it charges a short
call's one window at the long windows' price (about 2.5x over on the reference host). So
each timed forward is one observation of (padded tokens per window, seconds per window),
and a line `seconds = fixed + per_token * tokens` is fitted to their recent moments
(exponentially weighted). When the recent windows all have about the same length the line
is not determined; then the cost is proportional to tokens, which is the old per-window
figure for that length.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class WindowCost:
    weight: float = 0.1  # of each new forward in the moving moments
    forwards: int = 0
    _x: float = 0.0  # mean padded tokens per window
    _y: float = 0.0  # mean seconds per window
    _xx: float = 0.0
    _xy: float = 0.0

    @property
    def known(self) -> bool:
        return self.forwards > 0 and self._y > 0

    def observe(self, windows: int, padded_tokens: int, seconds: float) -> None:
        """One timed forward of `windows` windows (one thread)."""
        if windows <= 0 or padded_tokens <= 0 or seconds <= 0:
            return
        x, y = padded_tokens / windows, seconds / windows
        w = 1.0 if self.forwards == 0 else self.weight
        self._x += w * (x - self._x)
        self._y += w * (y - self._y)
        self._xx += w * (x * x - self._xx)
        self._xy += w * (x * y - self._xy)
        self.forwards += 1

    def line(self) -> tuple[float, float]:
        """(fixed seconds per window, seconds per token)."""
        if not self.known:
            return 0.0, 0.0
        spread = self._xx - self._x * self._x
        if spread > (0.25 * self._x) ** 2:  # lengths vary enough to tell the parts apart
            per_token = (self._xy - self._x * self._y) / spread
            fixed = self._y - per_token * self._x
            if per_token > 0 and fixed >= 0:
                return fixed, per_token
        return 0.0, self._y / self._x

    def seconds(self, windows: int, tokens: float) -> float:
        """Forward seconds (one thread) for `windows` windows of `tokens` tokens in all."""
        fixed, per_token = self.line()
        return windows * fixed + tokens * per_token

    @property
    def window_tokens(self) -> float:
        """Recent mean tokens per window (0 before the first forward)."""
        return self._x
