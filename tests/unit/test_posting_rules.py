"""post_batch turns legs into entries that conserve money per currency, applies credits before
debits, keeps balances in range and out of unauthorised overdraft, posts atomic groups whole or
rejects them whole (the others as linked_transfer_failed) without touching their neighbours, and
a batch is exactly its units posted one by one."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import replace

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ledger_core.domain import limits
from ledger_core.domain.model import (
    AccountState,
    BatchResult,
    Entry,
    Leg,
    Outcome,
    Posted,
    Rejected,
    RejectionReason,
    TransferToPost,
)
from ledger_core.domain.posting import post_batch

INT64_MAX = 2**63 - 1  # the largest amount
BALANCE_MIN = limits.balance_min
BALANCE_MAX = limits.balance_max
CURRENCIES = ("USD", "EUR", "JPY")
INSUFFICIENT = RejectionReason.INSUFFICIENT_FUNDS
OVERFLOW = RejectionReason.BALANCE_OVERFLOW
LINKED = RejectionReason.LINKED_TRANSFER_FAILED

Accounts = dict[str, AccountState]

# Balances and amounts cluster at the edges, where the interesting rejections live.
non_negative_balances = st.one_of(
    st.integers(0, 1_000),
    st.integers(BALANCE_MAX - 1_000, BALANCE_MAX),
    st.integers(0, BALANCE_MAX),
)
any_balances = st.one_of(
    st.integers(-1_000, 1_000),
    st.integers(BALANCE_MIN, BALANCE_MIN + 1_000),
    st.integers(BALANCE_MAX - 1_000, BALANCE_MAX),
    st.integers(BALANCE_MIN, BALANCE_MAX),
)
amounts = st.one_of(
    st.integers(1, 1_500),
    st.integers(1, INT64_MAX),
    st.integers(INT64_MAX - 1_000, INT64_MAX),
)


@st.composite
def legs_in(draw: st.DrawFn, account_ids: list[str]) -> list[Leg] | None:
    """Two to four legs on distinct accounts of one currency that sum to zero, or None."""
    chosen = draw(st.lists(st.sampled_from(account_ids), min_size=2, max_size=4, unique=True))
    signs = draw(st.lists(st.booleans(), min_size=len(chosen) - 1, max_size=len(chosen) - 1))
    first = [draw(amounts) * (1 if up else -1) for up in signs]
    last = -sum(first)
    if last == 0 or abs(last) > limits.amount_max:
        return None
    return [Leg(a, x) for a, x in zip(chosen, [*first, last], strict=True)]


@st.composite
def books(
    draw: st.DrawFn, *, multi_leg: bool = True, groups: bool = True
) -> tuple[Accounts, list[TransferToPost]]:
    """A few accounts in one to three currencies and valid transfers between them: plain
    two-leg ones, multi-leg ones (also across two currencies, each balanced) and atomic
    groups of consecutive transfers."""
    currency_count = draw(st.integers(1, len(CURRENCIES)))
    accounts: Accounts = {}
    for index in range(draw(st.integers(2, 6))):
        overdraft = draw(st.booleans())
        account = AccountState(
            id=f"acc_{index}",
            currency=draw(st.sampled_from(CURRENCIES[:currency_count])),
            balance=draw(any_balances if overdraft else non_negative_balances),
            allow_overdraft=overdraft,
        )
        accounts[account.id] = account
    by_currency = {
        c: [a.id for a in accounts.values() if a.currency == c] for c in CURRENCIES[:currency_count]
    }
    usable = [ids for ids in by_currency.values() if len(ids) >= 2]
    if not usable:
        return accounts, []
    movements: list[tuple[Leg, ...]] = []
    for _ in range(draw(st.integers(0, 20))):
        shape = draw(st.sampled_from(["pair", "multi", "cross"] if multi_leg else ["pair"]))
        if shape == "pair":
            source, destination = draw(
                st.lists(
                    st.sampled_from(draw(st.sampled_from(usable))),
                    min_size=2,
                    max_size=2,
                    unique=True,
                )
            )
            amount = draw(amounts)
            movements.append((Leg(source, -amount), Leg(destination, amount)))
            continue
        currencies = draw(
            st.lists(st.sampled_from(usable), min_size=1, max_size=2 if shape == "cross" else 1)
        )
        legs: list[Leg] = []
        for ids in currencies:
            drawn = draw(legs_in(ids))
            if drawn is None or {leg.account_id for leg in drawn} & {
                leg.account_id for leg in legs
            }:
                break
            legs += drawn
        else:
            movements.append(tuple(legs))
    transfers: list[TransferToPost] = []
    position = 0
    while position < len(movements):
        size = draw(st.integers(1, 4)) if groups else 1
        group = draw(st.booleans()) and groups
        group_id = f"g_{position}" if group else None
        for n, legs in enumerate(movements[position : position + size]):
            transfers.append(TransferToPost(f"tr_{position + n:03}", legs, group_id))
            if group_id is None:
                break
        position = len(transfers)
    return accounts, transfers


def units(transfers: Sequence[TransferToPost]) -> Iterator[list[TransferToPost]]:
    """Single transfers, and consecutive transfers of one group as one unit."""
    unit: list[TransferToPost] = []
    for t in transfers:
        if unit and (t.group_id is None or t.group_id != unit[0].group_id):
            yield unit
            unit = []
        unit.append(t)
    if unit:
        yield unit


def final_balances(accounts: Accounts, result: BatchResult) -> dict[str, int]:
    """Balances after the batch: untouched accounts keep the balance they had."""
    return {i: result.balances.get(i, a.balance) for i, a in accounts.items()}


def carried(accounts: Accounts, balances: dict[str, int]) -> Accounts:
    return {i: replace(a, balance=balances.get(i, a.balance)) for i, a in accounts.items()}


def oracle(accounts: Accounts, transfers: Sequence[TransferToPost]) -> list[Outcome]:
    """The rules as the docs state them, for transfers whose legs name distinct accounts:
    a debit that leaves a non-overdraft account below zero is insufficient funds, a balance
    outside the 128-bit range an overflow (insufficient funds named first), and a group
    stands or falls together, its first failing member naming the reason."""
    balances = {i: a.balance for i, a in accounts.items()}
    outcomes: list[Outcome] = []
    for unit in units(transfers):
        trial = dict(balances)
        unit_outcomes: list[Outcome] = []
        failed: Rejected | None = None
        for t in unit:
            after = {leg.account_id: trial[leg.account_id] + leg.amount for leg in t.legs}
            # Each rejection names the first account that refuses it, in posting order.
            in_order = [leg for _, leg in sorted(enumerate(t.legs), key=lambda i: i[1].amount < 0)]
            short = [
                leg.account_id
                for leg in in_order
                if leg.amount < 0
                and after[leg.account_id] < 0
                and not accounts[leg.account_id].allow_overdraft
            ]
            out = [
                leg.account_id
                for leg in in_order
                if not BALANCE_MIN <= after[leg.account_id] <= BALANCE_MAX
            ]
            if short:
                failed = Rejected(t.id, INSUFFICIENT, short[0])
            elif out:
                failed = Rejected(t.id, OVERFLOW, out[0])
            if failed is not None:
                break
            trial.update(after)
            credits_first = sorted(enumerate(t.legs), key=lambda item: item[1].amount < 0)
            entries = tuple(
                Entry(t.id, leg.account_id, leg.amount, after[leg.account_id], index)
                for index, leg in credits_first
            )
            unit_outcomes.append(Posted(t.id, entries))
        if failed is None:
            balances = trial
            outcomes += unit_outcomes
        elif len(unit) == 1:
            outcomes.append(failed)
        else:
            outcomes += [
                failed if t.id == failed.transfer_id else Rejected(t.id, LINKED) for t in unit
            ]
    return outcomes


PROPERTY_SETTINGS = settings(
    max_examples=120,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)


@PROPERTY_SETTINGS
@given(books())
def test_each_outcome_is_the_one_the_rules_call_for(book):
    accounts, transfers = book
    snapshot, transfers_before = dict(accounts), list(transfers)
    result = post_batch(accounts, transfers)
    assert [o.transfer_id for o in result.outcomes] == [t.id for t in transfers]
    assert result.outcomes == oracle(accounts, transfers)
    assert (accounts, transfers) == (snapshot, transfers_before), "the input was changed"


@PROPERTY_SETTINGS
@given(books())
def test_postings_write_their_legs_credits_first_and_conserve_money(book):
    accounts, transfers = book
    result = post_batch(accounts, transfers)
    running = {i: a.balance for i, a in accounts.items()}
    for transfer, outcome in zip(transfers, result.outcomes, strict=True):
        if not isinstance(outcome, Posted):
            continue
        assert all(e.transfer_id == transfer.id for e in outcome.entries)
        credits = [leg for leg in transfer.legs if leg.amount > 0]
        debits = [leg for leg in transfer.legs if leg.amount < 0]
        assert [Leg(e.account_id, e.amount) for e in outcome.entries] == credits + debits
        sums: dict[str, int] = {}
        for e in outcome.entries:
            currency = accounts[e.account_id].currency
            sums[currency] = sums.get(currency, 0) + e.amount
            running[e.account_id] += e.amount
            assert e.balance_after == running[e.account_id], "balance_after is the running one"
            assert BALANCE_MIN <= e.balance_after <= BALANCE_MAX
            assert accounts[e.account_id].allow_overdraft or e.balance_after >= 0
        assert set(sums.values()) == {0}, "every posting balances per currency"
    after = final_balances(accounts, result)
    assert after == running
    touched = {e.account_id for o in result.outcomes if isinstance(o, Posted) for e in o.entries}
    assert set(result.balances) == touched
    for currency in CURRENCIES:
        ids = [i for i, a in accounts.items() if a.currency == currency]
        assert sum(after[i] for i in ids) == sum(accounts[i].balance for i in ids)
    for account_id, balance in after.items():
        assert BALANCE_MIN <= balance <= BALANCE_MAX
        assert accounts[account_id].allow_overdraft or balance >= 0


@PROPERTY_SETTINGS
@given(books(), st.integers(0, 20))
def test_a_batch_is_its_units_posted_one_by_one_or_in_two_parts(book, cut_unit):
    accounts, transfers = book
    batch = post_batch(accounts, transfers)
    current, outcomes = accounts, []
    all_units = list(units(transfers))
    for unit in all_units:
        result = post_batch(current, unit)
        outcomes += result.outcomes
        current = carried(current, result.balances)
    assert batch.outcomes == outcomes
    assert final_balances(accounts, batch) == {i: a.balance for i, a in current.items()}

    cut = sum(len(u) for u in all_units[:cut_unit])
    first = post_batch(accounts, transfers[:cut])
    after_first = carried(accounts, first.balances)
    second = post_batch(after_first, transfers[cut:])
    assert first.outcomes + second.outcomes == batch.outcomes
    assert final_balances(after_first, second) == final_balances(accounts, batch)


@PROPERTY_SETTINGS
@given(books(multi_leg=False, groups=False))
def test_a_batch_of_plain_transfers_is_them_posted_one_by_one(book):
    accounts, transfers = book
    batch = post_batch(accounts, transfers)
    current, outcomes = accounts, []
    for transfer in transfers:
        result = post_batch(current, [transfer])
        [outcome] = result.outcomes
        outcomes.append(outcome)
        current = carried(current, result.balances)
    assert batch.outcomes == outcomes
    assert final_balances(accounts, batch) == {i: a.balance for i, a in current.items()}


@PROPERTY_SETTINGS
@given(books())
def test_a_group_stands_or_falls_whole_and_a_fallen_one_leaves_no_trace(book):
    accounts, transfers = book
    result = post_batch(accounts, transfers)
    by_id = {o.transfer_id: o for o in result.outcomes}
    for unit in units(transfers):
        outcomes = [by_id[t.id] for t in unit]
        if len(unit) < 2 or all(isinstance(o, Posted) for o in outcomes):
            continue
        assert all(isinstance(o, Rejected) for o in outcomes), outcomes
        reasons = [o.reason for o in outcomes if isinstance(o, Rejected)]
        assert len([r for r in reasons if r is not LINKED]) == 1, reasons
        group = {t.id for t in unit}
        without = post_batch(accounts, [t for t in transfers if t.id not in group])
        assert without.outcomes == [o for o in result.outcomes if o.transfer_id not in group]
        assert final_balances(accounts, without) == final_balances(accounts, result)


# Examples.


def account(account_id: str, balance: int, *, overdraft: bool = False, currency: str = "USD"):
    return AccountState(account_id, currency, balance, overdraft)


def accounts_of(*states: AccountState) -> Accounts:
    return {s.id: s for s in states}


def between(transfer_id: str, source: str, destination: str, amount, group_id=None):
    return TransferToPost.between(transfer_id, source, destination, amount, group_id)


def test_exact_funds_post_and_leave_zero():
    result = post_batch(
        accounts_of(account("a", 100), account("b", 5)), [between("t1", "a", "b", 100)]
    )
    assert result.outcomes == [
        Posted("t1", (Entry("t1", "b", 100, 105, 1), Entry("t1", "a", -100, 0, 0)))
    ]
    assert result.balances == {"a": 0, "b": 105}


def test_one_unit_more_than_the_funds_is_rejected_and_touches_nothing():
    result = post_batch(
        accounts_of(account("a", 100), account("b", 5)), [between("t1", "a", "b", 101)]
    )
    assert result.outcomes == [Rejected("t1", INSUFFICIENT, "a")]
    assert result.balances == {}


def test_empty_account_cannot_send_one_unit():
    result = post_batch(accounts_of(account("a", 0), account("b", 0)), [between("t1", "a", "b", 1)])
    assert result.outcomes == [Rejected("t1", INSUFFICIENT, "a")]


def test_overdraft_account_may_go_negative():
    result = post_batch(
        accounts_of(account("a", 10, overdraft=True), account("b", 0)),
        [between("t1", "a", "b", 50)],
    )
    assert isinstance(result.outcomes[0], Posted)
    assert result.balances == {"a": -40, "b": 50}


def test_credit_past_balance_max_is_rejected_as_overflow():
    result = post_batch(
        accounts_of(account("a", 10), account("b", BALANCE_MAX)), [between("t1", "a", "b", 1)]
    )
    assert result.outcomes == [Rejected("t1", OVERFLOW, "b")]
    assert result.balances == {}


def test_credit_up_to_balance_max_posts():
    result = post_batch(
        accounts_of(account("a", 10), account("b", BALANCE_MAX - 1)), [between("t1", "a", "b", 1)]
    )
    assert result.balances == {"a": 9, "b": BALANCE_MAX}


def test_debit_past_balance_min_is_rejected_as_overflow_even_with_overdraft():
    result = post_batch(
        accounts_of(account("a", BALANCE_MIN, overdraft=True), account("b", 0)),
        [between("t1", "a", "b", 1)],
    )
    assert result.outcomes == [Rejected("t1", OVERFLOW, "a")]


def test_insufficient_funds_is_named_before_an_overflow_of_the_same_transfer():
    result = post_batch(
        accounts_of(account("a", 0), account("b", BALANCE_MAX)), [between("t1", "a", "b", 1)]
    )
    assert result.outcomes == [Rejected("t1", INSUFFICIENT, "a")]


def test_largest_amount_moves_the_whole_int64_range():
    result = post_batch(
        accounts_of(account("a", INT64_MAX), account("b", 0)), [between("t1", "a", "b", INT64_MAX)]
    )
    assert result.balances == {"a": 0, "b": INT64_MAX}


def test_balances_hold_many_largest_amounts():
    """Balances are 128-bit: one maximal deposit must not exhaust a currency's system account."""
    system = account("sys", -INT64_MAX, overdraft=True)
    result = post_batch(
        accounts_of(system, account("b", INT64_MAX)), [between("t1", "sys", "b", INT64_MAX)]
    )
    assert result.balances == {"sys": -2 * INT64_MAX, "b": 2 * INT64_MAX}


def test_rejected_transfer_does_not_stop_the_next_one():
    result = post_batch(
        accounts_of(account("a", 100), account("b", 0)),
        [between("t1", "a", "b", 150), between("t2", "a", "b", 100)],
    )
    assert result.outcomes[0] == Rejected("t1", INSUFFICIENT, "a")
    assert isinstance(result.outcomes[1], Posted)
    assert result.balances == {"a": 0, "b": 100}


def test_later_transfer_spends_money_an_earlier_one_in_the_batch_brought():
    accounts = accounts_of(account("a", 0), account("b", 100), account("c", 0))
    funded_first = post_batch(
        accounts, [between("t1", "b", "a", 100), between("t2", "a", "c", 100)]
    )
    assert all(isinstance(o, Posted) for o in funded_first.outcomes)
    assert funded_first.balances == {"a": 0, "b": 0, "c": 100}

    spent_first = post_batch(accounts, [between("t2", "a", "c", 100), between("t1", "b", "a", 100)])
    assert spent_first.outcomes[0] == Rejected("t2", INSUFFICIENT, "a")
    assert spent_first.balances == {"a": 100, "b": 0}


def test_empty_batch_posts_nothing():
    assert post_batch(accounts_of(account("a", 1)), []) == BatchResult(outcomes=[], balances={})


# Legs.


def test_a_multi_leg_transfer_splits_one_debit_over_several_credits():
    accounts = accounts_of(account("a", 100), account("b", 0), account("c", 7))
    legs = (Leg("a", -100), Leg("b", 60), Leg("c", 40))
    result = post_batch(accounts, [TransferToPost("t1", legs)])
    assert result.outcomes == [
        Posted(
            "t1",
            (
                Entry("t1", "b", 60, 60, 1),
                Entry("t1", "c", 40, 47, 2),
                Entry("t1", "a", -100, 0, 0),
            ),
        )
    ]
    assert result.balances == {"a": 0, "b": 60, "c": 47}


def test_one_short_leg_rejects_the_whole_multi_leg_transfer():
    accounts = accounts_of(account("a", 100), account("b", 10), account("c", 0))
    legs = (Leg("a", -50), Leg("b", -11), Leg("c", 61))
    result = post_batch(accounts, [TransferToPost("t1", legs)])
    assert result.outcomes == [Rejected("t1", INSUFFICIENT, "b")]
    assert result.balances == {}


def test_credits_are_applied_before_debits_so_only_the_net_is_needed():
    """An account that receives and pays within one transfer never shows below zero."""
    accounts = accounts_of(account("a", 0), account("b", 100), account("c", 0))
    # Debits listed first on purpose: the order of the legs does not decide.
    legs = (Leg("a", -100), Leg("c", 100), Leg("b", -100), Leg("a", 100))
    result = post_batch(accounts, [TransferToPost("t1", legs)])
    [outcome] = result.outcomes
    assert isinstance(outcome, Posted)
    assert [(e.account_id, e.amount, e.balance_after) for e in outcome.entries] == [
        ("c", 100, 100),
        ("a", 100, 100),
        ("a", -100, 0),
        ("b", -100, 0),
    ]
    assert result.balances == {"a": 0, "b": 0, "c": 100}


def test_a_transfer_across_currencies_posts_when_each_currency_balances():
    accounts = accounts_of(
        account("usd_a", 100), account("usd_b", 0), account("eur_a", 0, currency="EUR"),
        account("eur_b", 90, currency="EUR"),
    )  # fmt: skip
    legs = (Leg("usd_a", -100), Leg("usd_b", 100), Leg("eur_b", -90), Leg("eur_a", 90))
    result = post_batch(accounts, [TransferToPost("fx", legs)])
    assert isinstance(result.outcomes[0], Posted)
    assert result.balances == {"usd_a": 0, "usd_b": 100, "eur_a": 90, "eur_b": 0}


# Atomic groups.


def test_a_group_with_one_failing_member_is_rejected_whole_and_its_neighbours_post():
    accounts = accounts_of(account("a", 100), account("b", 0), account("c", 0))
    result = post_batch(
        accounts,
        [
            between("before", "a", "b", 10),
            between("g1", "a", "c", 10, "g"),
            between("g2", "b", "c", 11, "g"),  # b holds 10 + 0
            between("g3", "a", "c", 10, "g"),
            between("after", "a", "b", 90),
        ],
    )
    assert result.outcomes[1:4] == [
        Rejected("g1", LINKED),
        Rejected("g2", INSUFFICIENT, "b"),
        Rejected("g3", LINKED),
    ]
    assert isinstance(result.outcomes[0], Posted)
    assert isinstance(result.outcomes[4], Posted)
    # The group's first member moved nothing: "after" finds a's 90 untouched.
    assert result.balances == {"a": 0, "b": 100}


def test_a_group_member_may_spend_what_an_earlier_member_brought():
    accounts = accounts_of(account("a", 0), account("b", 100), account("c", 0))
    result = post_batch(
        accounts, [between("g1", "b", "a", 100, "g"), between("g2", "a", "c", 100, "g")]
    )
    assert all(isinstance(o, Posted) for o in result.outcomes)
    assert result.balances == {"a": 0, "b": 0, "c": 100}


def test_a_rejected_group_funds_nothing_after_it():
    accounts = accounts_of(account("a", 0), account("b", 100), account("c", 0))
    result = post_batch(
        accounts,
        [
            between("g1", "b", "a", 100, "g"),
            between("g2", "c", "b", 1, "g"),  # c is empty: the group fails
            between("after", "a", "c", 100),
        ],
    )
    assert result.outcomes == [
        Rejected("g1", LINKED),
        Rejected("g2", INSUFFICIENT, "c"),
        Rejected("after", INSUFFICIENT, "a"),
    ]
    assert result.balances == {}


def test_an_overflow_in_a_group_rejects_it_with_that_reason():
    accounts = accounts_of(account("a", 10), account("b", BALANCE_MAX), account("c", 0))
    result = post_batch(
        accounts, [between("g1", "a", "c", 1, "g"), between("g2", "a", "b", 1, "g")]
    )
    assert result.outcomes == [Rejected("g1", LINKED), Rejected("g2", OVERFLOW, "b")]


def test_a_group_of_one_is_rejected_for_its_own_reason():
    result = post_batch(
        accounts_of(account("a", 0), account("b", 0)), [between("g1", "a", "b", 1, "g")]
    )
    assert result.outcomes == [Rejected("g1", INSUFFICIENT, "a")]


def test_a_group_split_within_the_batch_raises():
    accounts = accounts_of(account("a", 100), account("b", 0))
    with pytest.raises(ValueError, match="split"):
        post_batch(
            accounts,
            [
                between("g1", "a", "b", 1, "g"),
                between("x", "a", "b", 1),
                between("g2", "a", "b", 1, "g"),
            ],
        )


# Broken invariants raise: no outcome would be right.


@pytest.mark.parametrize(
    ("amount", "message"),
    [
        (0, "invalid amount"),
        (INT64_MAX + 1, "invalid amount"),
        (True, "non-integer"),
        (1.0, "non-integer"),
        ("1", "non-integer"),
        (None, "non-integer"),
    ],
)
def test_invalid_amount_raises(amount, message):
    legs = (Leg("a", amount), Leg("b", amount))
    with pytest.raises(ValueError, match=message):
        post_batch(accounts_of(account("a", 100), account("b", 0)), [TransferToPost("t1", legs)])


def test_invalid_amount_later_in_the_batch_raises_rather_than_half_posting():
    with pytest.raises(ValueError):
        post_batch(
            accounts_of(account("a", 100), account("b", 0)),
            [between("t1", "a", "b", 1), between("t2", "a", "b", 0)],
        )


def test_transfer_to_itself_raises():
    with pytest.raises(ValueError, match="itself"):
        post_batch(accounts_of(account("a", 100)), [between("t1", "a", "a", 1)])


def test_cross_currency_pair_raises():
    with pytest.raises(ValueError, match="does not balance per currency"):
        post_batch(
            accounts_of(account("a", 100), account("b", 0, currency="EUR")),
            [between("t1", "a", "b", 1)],
        )


def test_legs_that_do_not_sum_to_zero_raise():
    legs = (Leg("a", -10), Leg("b", 9))
    with pytest.raises(ValueError, match="does not balance"):
        post_batch(accounts_of(account("a", 100), account("b", 0)), [TransferToPost("t1", legs)])


def test_fewer_than_two_legs_raise():
    with pytest.raises(ValueError, match="fewer than two legs"):
        post_batch(accounts_of(account("a", 100)), [TransferToPost("t1", (Leg("a", 1),))])


@pytest.mark.parametrize(
    ("source", "destination"), [("missing", "b"), ("a", "missing")], ids=["source", "destination"]
)
def test_account_missing_from_the_locked_set_raises(source, destination):
    with pytest.raises(ValueError, match="unlocked account missing"):
        post_batch(
            accounts_of(account("a", 100), account("b", 0)), [between("t1", source, destination, 1)]
        )
