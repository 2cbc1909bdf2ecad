"""A1111's learning-rate schedule syntax for training: ``"0.005:100, 1e-3:1000, 1e-5"``.

Each comma-separated item is ``rate:until_step`` (the rate holds while the step is below ``until_step``) or a
bare ``rate`` (until the last step); ``rate:-1`` also means until the last step. Items ending at or before the
step a run resumes from are skipped; an ``until_step`` past the run's last step is cut there and ends the
list. A run is finished when its step reaches the end of the last item. A malformed schedule is a
``ValueError`` whose message quotes it.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class LearnRateSchedule:
    """``(rate, end_step)`` pairs in order."""

    pairs: tuple[tuple[float, int], ...]

    @classmethod
    def parse(cls, text: str | float, max_steps: int, start_step: int = 0) -> LearnRateSchedule:
        pairs: list[tuple[float, int]] = []
        try:
            for item in str(text).split(","):
                item = item.strip()
                if not item:
                    continue
                parts = item.split(":")
                if len(parts) > 2:
                    raise ValueError(item)
                rate = float(parts[0])
                if rate <= 0 or rate != rate:
                    raise ValueError(item)
                until = int(parts[1]) if len(parts) == 2 else -1
                if until == -1:
                    pairs.append((rate, max_steps))
                    break
                if until > start_step:
                    pairs.append((rate, min(until, max_steps)))
                    if until > max_steps:
                        break
        except ValueError as exc:
            raise ValueError(f"invalid learning rate schedule {text!r}: use 'rate' or 'rate:step, rate:step, rate' "
                             "(e.g. '0.005:100, 1e-3:1000, 1e-5')") from exc
        if not pairs:
            raise ValueError(f"invalid learning rate schedule {text!r}: no rate applies after step {start_step}")
        return cls(tuple(pairs))

    def rate_at(self, step: int) -> float | None:
        """The rate for ``step`` (0-based count of optimizer steps done), None once the schedule is over."""
        for rate, end in self.pairs:
            if step < end:
                return rate
        return None

    @property
    def last_step(self) -> int:
        return self.pairs[-1][1]
