"""The round loop's pure parts: the line a volunteer reads when a round commits nothing."""

from potluck.engine.attempt import abandoned


def test_an_abandoned_round_names_the_last_failure():
    last = "round 7 attempt 2 (allreduce): the all-reduce timed out (2 participants, 50M coordinates)"
    line = abandoned(7, 3, last, 15.0, 3.5)
    assert line == (
        "round 7 abandoned after 3 attempt(s); the last failed: the all-reduce timed out "
        "(2 participants, 50M coordinates)"
    )


def test_a_round_without_room_for_an_attempt_says_to_lengthen_rounds():
    line = abandoned(4, 0, "round 3 attempt 0 (gathered): an older failure", 15.0, 16.1)
    assert "window (15.0 s" in line and "(16.1 s for this model): use longer rounds" in line


def test_an_error_of_another_round_is_not_blamed():
    line = abandoned(9, 2, "round 8 attempt 0 (gathered): 1 of the round's 2 updates not fetched", 15.0, 3.5)
    assert line == "round 9 abandoned: 2 attempt(s), none committed before the deadline"
