"""The draft odds alone: what a drafted token is worth given the machine's step costs and how
drafts behind a match of each length went; and the drafter asking them."""

from __future__ import annotations

import numpy as np

from bots.engine.batched.draft_odds import EXPLORE, MATCH_CAP, DraftOdds
from bots.engine.batched.speculation import DRAFT_MIN, NGRAM, Drafter

# Step costs measured on the 2-core development machine (SmolLM2 Q8_0, 1,000 tokens deep): a
# one-token step 27 ms, each drafted token 13 ms more; on a GPU a drafted token costs ~2 %.
CPU_STEP_S, CPU_TOKEN_S = 0.027, 0.013


def timed(odds: DraftOdds, step_s: float, token_s: float, streams: int = 1) -> None:
    for _ in range(30):
        odds.stepped(streams, streams, step_s)
        odds.stepped(streams, streams + 4, step_s + 4 * token_s)


def test_the_cost_of_a_drafted_token_is_measured_from_the_steps() -> None:
    odds = DraftOdds()
    assert odds.cost(1) == 0.0, "nothing measured yet: drafts are tried"
    timed(odds, CPU_STEP_S, CPU_TOKEN_S)
    assert abs(odds.cost(1) - CPU_TOKEN_S / CPU_STEP_S) < 0.01
    assert odds.cost(2) == 0.0, "steps of two streams are measured apart"


def test_drafts_behind_coincidental_matches_stop_where_they_cost_more_than_they_keep() -> None:
    cpu, gpu = DraftOdds(), DraftOdds()
    timed(cpu, CPU_STEP_S, CPU_TOKEN_S)
    timed(gpu, 0.010, 0.0002)
    for odds in (cpu, gpu):
        for i in range(40):
            odds.drafted(NGRAM, 2, int(i % 5 == 0))  # the first token kept one time in five
    assert cpu.length(NGRAM, 16) == 0, "one in five is not worth half a step per token"
    assert gpu.length(NGRAM, 16) >= 1, "on a GPU the same odds still pay"
    assert cpu.length(NGRAM + 5, 16) > 0, "other match lengths keep their own odds"


def test_a_quoting_reply_earns_long_drafts() -> None:
    odds = DraftOdds()
    timed(odds, CPU_STEP_S, CPU_TOKEN_S)
    assert odds.length(MATCH_CAP, 16) == 1, "the prior: one in two kept, then one in two"
    for _ in range(30):
        odds.drafted(MATCH_CAP + 4, 8, 8)  # long matches count as MATCH_CAP
    assert odds.length(MATCH_CAP, 16) == 16
    assert odds.length(MATCH_CAP, 5) == 5, "never more than asked for"


def test_a_declined_match_length_is_tried_again_now_and_then() -> None:
    odds = DraftOdds()
    timed(odds, CPU_STEP_S, CPU_TOKEN_S)
    for _ in range(40):
        odds.drafted(NGRAM, 2, 0)
    chances = [odds.length(NGRAM, 16) for _ in range(2 * EXPLORE)]
    assert chances.count(1) == 2 and set(chances) == {0, 1}
    assert chances[EXPLORE - 1] == 1 and chances[2 * EXPLORE - 1] == 1


def test_the_drafter_asks_the_odds_with_the_length_of_its_match() -> None:
    odds = DraftOdds()
    timed(odds, CPU_STEP_S, CPU_TOKEN_S)
    for _ in range(40):
        odds.drafted(NGRAM, 2, 0)  # coincidental 3-token matches never pay here
        odds.drafted(NGRAM + 3, 8, 8)  # six-token matches always do
    # ... 9 1 2 3 | 4 5 ... : the reply's last six tokens (7 8 9 1 2 3) occurred before.
    context = np.asarray([7, 8, 9, 1, 2, 3, 4, 5, 6, 0, 0, 7, 8, 9, 1, 2, 3], dtype=np.int32)
    quoting = Drafter(context, draft_max=16, odds=odds)
    assert quoting.draft(16) == [4, 5, 6, 0, 0, 7, 8, 9, 1, 2, 3]
    quoting.verified(11, 11)
    # Only the last three tokens (1 2 3) occurred before, after other ones.
    coincidence = np.asarray([5, 5, 1, 2, 3, 4, 5, 6, 9, 9, 9, 1, 2, 3], dtype=np.int32)
    assert Drafter(coincidence, draft_max=16, odds=odds).draft(16) == []
    assert Drafter(coincidence, draft_max=16).draft(16) == [4, 5, 6, 9, 9, 9, 1, 2, 3]


def test_a_worthwhile_draft_is_never_shorter_than_draft_min() -> None:
    odds = DraftOdds()
    timed(odds, CPU_STEP_S, CPU_TOKEN_S)
    assert odds.length(MATCH_CAP, 16) == 1
    context = np.tile(np.asarray([1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13], dtype=np.int32), 2)
    assert len(Drafter(context, draft_max=16, odds=odds).draft(16)) == DRAFT_MIN
