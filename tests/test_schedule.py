import json

import numpy as np
import pytest

import infoplane
from infoplane.tracking.schedule import Schedule, as_schedule, ending_at, every, from_json, log_schedule, saxe_schedule


def test_log_schedule_is_the_original_rule_plus_the_final_epoch():
    s = log_schedule(8000, 400)
    ref = np.unique(np.logspace(0, np.log2(8000), 400, base=2).astype(np.int64)) - 1
    # The original's 274 epochs are unchanged and recoverable; the trained network (epoch 8000) is added.
    assert len(ref) == 274 and ref[-1] == 7999
    np.testing.assert_array_equal(s.epochs[:-1], ref)
    assert s.epochs[-1] == 8000 and len(s) == 275 == len(set(s))
    assert s.epochs[:20].tolist() == list(range(20))
    assert all(e in s for e in ref) and 20_000 not in s


@pytest.mark.parametrize("n_epochs,n_points", [(100, 10), (10000, 50), (1, 5)])
def test_log_schedule_is_sorted_distinct_and_in_range(n_epochs, n_points):
    e = log_schedule(n_epochs, n_points).epochs
    # Truncating 2**log2(n) can land just below n (as in the original code), so the last original point is
    # n-1 or n-2; the final epoch n follows it.
    assert e[0] == 0 and e[-1] == n_epochs and n_epochs - 2 <= e[-2] <= n_epochs - 1
    assert np.all(np.diff(e) > 0)


def test_every_finite_and_open_ended():
    assert every(3, 10).epochs.tolist() == [0, 3, 6, 9, 10]
    assert every(2, 10).epochs.tolist() == [0, 2, 4, 6, 8, 10]
    assert every(1, 5).epochs.tolist() == [0, 1, 2, 3, 4, 5]
    s = every(3)
    assert not s.finite
    assert 300 in s and 301 not in s and -3 not in s
    with pytest.raises(ValueError, match="n_epochs"):
        _ = s.epochs


def test_saxe_schedule_rule():
    s = saxe_schedule(3000)
    expected = [e for e in range(3001)
                if e < 20 or (e < 100 and e % 5 == 0) or (e < 2000 and e % 20 == 0) or e % 100 == 0]
    assert s.epochs.tolist() == expected and expected[-1] == 3000
    assert saxe_schedule(2990).epochs[-2:].tolist() == [2900, 2990]
    open_ended = saxe_schedule()
    assert all((e in open_ended) == (e in s) for e in range(3000))
    assert 10_000 in open_ended and 10_050 not in open_ended


def test_list_schedule_membership_and_cleanup():
    s = as_schedule([5, 1, 5, np.int64(9)])
    assert s.epochs.tolist() == [1, 5, 9]
    assert 5 in s and np.int32(9) in s and 2 not in s and "x" not in s


@pytest.mark.parametrize("bad", [[], [-1, 2], [1.5], "12"])
def test_bad_lists_are_rejected(bad):
    with pytest.raises((ValueError, TypeError)):
        as_schedule(bad)


@pytest.mark.parametrize("bad", [(0, 10), (10, 0), (2.5, 3)])
def test_bad_log_arguments(bad):
    with pytest.raises(ValueError):
        log_schedule(*bad)


@pytest.mark.parametrize("s", [log_schedule(500, 40), every(4, 50), every(7), saxe_schedule(300),
                               saxe_schedule(), as_schedule([3, 8, 1])])
def test_json_round_trip(s):
    back = from_json(json.loads(json.dumps(s.to_json())))
    assert isinstance(back, Schedule) and back == s and hash(back) == hash(s)
    if s.finite:
        np.testing.assert_array_equal(back.epochs, s.epochs)
    assert all((e in back) == (e in s) for e in range(600))


def test_public_names():
    assert infoplane.log_schedule is log_schedule and infoplane.every is every
    assert infoplane.saxe_schedule is saxe_schedule
    assert as_schedule(None) == every(1)


@pytest.mark.parametrize("make", [lambda n: log_schedule(n, 7), lambda n: every(1, n), lambda n: every(4, n),
                                  lambda n: saxe_schedule(n)])
@pytest.mark.parametrize("n", [1, 2, 5, 10, 37, 250])
def test_every_schedule_of_an_n_epoch_run_ends_with_n(make, n):
    # Epoch e is the network after e epochs: 0 is the initialisation and n the trained network.
    e = make(n).epochs.tolist()
    assert e[0] == 0 and e[-1] == n and e == sorted(set(e)) and all(0 <= x <= n for x in e)


def test_ending_at_adds_the_final_epoch_and_drops_later_ones():
    s = log_schedule(30, 10)
    assert ending_at(s, 30) is s  # already right: kept, so meta.json keeps kind "log"
    assert ending_at([0, 2, 9, 40], 10).epochs.tolist() == [0, 2, 9, 10]
    assert ending_at(every(3), 10).epochs.tolist() == [0, 3, 6, 9, 10]
    assert ending_at(None, 3).epochs.tolist() == [0, 1, 2, 3]
    assert ending_at(saxe_schedule(), 0).epochs.tolist() == [0]
