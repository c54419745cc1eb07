"""Which adapter set the next decode step serves: llama.cpp applies a context's LoRA adapters to
every token of a decode, so slots of different adapter sets take turns, one set per step.

The first decode after the context's adapter set changed costs about 5 ms more on 2 cores
(llama.cpp reserves its compute graph again: `sched_need_reserve`), against 20-25 ms for a step
of a few streams; in turns of `ADAPTER_TURN_STEPS` steps the switch is paid once per 16 tokens of
each stream, and no set waits longer than the others' turns.
"""

from __future__ import annotations

from bots.engine.base import Adapter
from bots.engine.batched.slot import Slot

ADAPTER_TURN_STEPS = 16


class AdapterTurns:
    """The set whose turn it is, and for how many steps it has had it; engine thread only."""

    def __init__(self) -> None:
        self._set: Adapter | None = None
        self._steps = 0

    def pick(self, running: list[Slot]) -> tuple[Adapter | None, list[Slot]]:
        """The adapter set this step decodes, and its slots among `running`: each set in turn,
        for up to `ADAPTER_TURN_STEPS` steps while others wait."""
        sets = list(dict.fromkeys(slot.task.request.adapter for slot in running))
        if self._set not in sets or (len(sets) > 1 and self._steps >= ADAPTER_TURN_STEPS):
            after = sets.index(self._set) + 1 if self._set in sets else 0
            self._set, self._steps = sets[after % len(sets)], 0
        self._steps += 1
        adapter = self._set
        return adapter, [slot for slot in running if slot.task.request.adapter == adapter]
