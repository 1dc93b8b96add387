"""Accepting stores PENDING transfers only when every rule allows it, lets the unique key on
the transfer (or the batch) decide whether a request acts, wakes the right posting shard only
after the commit, and accepts a batch whole or refuses it whole, atomic ones as one group."""

from __future__ import annotations

import contextlib
import logging

import pytest
from fakes import (
    TEST_API_KEY_ID,
    FakeIdempotencyCache,
    FakeStore,
    RecordingWake,
    admin_key,
    counted,
)
from scenario import (
    DEPOSIT,
    TRANSFER,
    WITHDRAWAL,
    accept,
    accept_batch,
    accepted_id,
    fresh_key,
    fund,
    item_ids,
    movement,
    new_account,
    open_account,
)

from ledger_core.domain import limits
from ledger_core.domain.records import TransferRecord
from ledger_core.domain.rules import posting_shard
from ledger_core.service_layer import accept as accept_service
from ledger_core.service_layer import posting
from ledger_core.service_layer.accounts import get_account
from ledger_core.service_layer.errors import Failure, Response, StorageUnavailableError
from ledger_core.service_layer.ports import NewTransfer, PendingWrite


@pytest.fixture
def alice(store) -> str:
    return new_account(store)


@pytest.fixture
def bob(store) -> str:
    return new_account(store)


@pytest.fixture
def claire_eur(store) -> str:
    return new_account(store, "EUR")


def transfer_json(store: FakeStore, transfer_id: str) -> dict:
    body = accept_service.get_transfer(store, transfer_id)
    assert isinstance(body, dict), body
    return body


def account_json(store: FakeStore, account_id: str) -> dict:
    body = get_account(store, account_id)
    assert isinstance(body, dict), body
    return body


def assert_pending_transfer(store, result, *, kind, source, destination, amount):
    assert isinstance(result, Response), result
    assert result.status_code == 202
    assert result.replayed is False
    body = result.body
    assert body["object"] == "transfer"
    assert body["id"].startswith("tr_")
    assert body["kind"] == kind.value
    assert body["status"] == "pending"
    assert body["rejection_reason"] is None
    assert body["posted_at"] is None
    assert body["batch_id"] is None
    assert body["created_at"].endswith("Z")
    assert (body["source_account_id"], body["destination_account_id"]) == (source, destination)
    assert body["amount"] == amount
    assert body["currency"] == "USD"
    assert transfer_json(store, body["id"]) == body


# --- accept_transfer ------------------------------------------------------------------------


def test_deposit_comes_from_the_currency_system_account(store, alice):
    result = accept(store, movement(DEPOSIT, None, alice, 250))
    system = store.system_account_id("USD")
    assert_pending_transfer(
        store, result, kind=DEPOSIT, source=system, destination=alice, amount=250
    )


def test_withdrawal_goes_to_the_currency_system_account(store, alice):
    result = accept(store, movement(WITHDRAWAL, alice, None, 70))
    system = store.system_account_id("USD")
    assert_pending_transfer(
        store, result, kind=WITHDRAWAL, source=alice, destination=system, amount=70
    )


def test_transfer_moves_between_the_two_named_accounts(store, alice, bob):
    result = accept(store, movement(TRANSFER, alice, bob, 5))
    assert_pending_transfer(store, result, kind=TRANSFER, source=alice, destination=bob, amount=5)


def test_system_account_of_the_account_currency_is_used(store, alice, claire_eur):
    result = accept(store, movement(DEPOSIT, None, claire_eur, 1))
    assert result.body["source_account_id"] == store.system_account_id("EUR")
    assert result.body["currency"] == "EUR"


def test_description_and_metadata_are_kept(store, alice):
    request = movement(DEPOSIT, None, alice, description="pay", metadata={"a": "b"})
    result = accept(store, request)
    assert (result.body["description"], result.body["metadata"]) == ("pay", {"a": "b"})
    assert transfer_json(store, result.body["id"])["metadata"] == {"a": "b"}


def test_pending_transfer_shows_in_both_balances(store, alice, bob):
    fund(store, alice, 1000)
    accept(store, movement(TRANSFER, alice, bob, 300))
    assert account_json(store, alice)["balance"] == {
        "posted": 1000,
        "pending": -300,
        "available": 700,
    }
    assert account_json(store, bob)["balance"] == {
        "posted": 0,
        "pending": 300,
        "available": 0,
    }


def test_the_shard_is_woken_once_after_the_commit(store, wake, alice):
    shards = 8
    result = accept(store, movement(WITHDRAWAL, alice, None, 1), wake=wake, shards=shards)
    transfer_id = accepted_id(result)
    [call] = wake.calls
    assert call.shard == posting_shard(alice, shards) == store.transfer(transfer_id).shard
    # The transfer was committed PENDING, and no transaction was open any more.
    assert transfer_id in call.committed_pending
    assert call.open_units_of_work == 0


def test_a_wake_up_that_raises_still_returns_202(store, alice, caplog):
    failing = RecordingWake(store, fail_with=ConnectionError("broker down"))
    with caplog.at_level(logging.ERROR, logger="ledger_core.service_layer.accept"):
        transfer_id = accepted_id(accept(store, movement(DEPOSIT, None, alice), wake=failing))
    assert len(failing.calls) == 1
    assert store.status(transfer_id) == "pending"
    assert "waking the posting workers failed" in caplog.text


def test_a_replay_is_not_woken_again_and_stores_nothing(store, cache, wake, alice):
    key = fresh_key()
    first = accept(store, movement(DEPOSIT, None, alice), cache=cache, wake=wake, key=key)
    second = accept(store, movement(DEPOSIT, None, alice), cache=cache, wake=wake, key=key)
    assert second == Response(202, first.body, replayed=True)
    assert len(store.state.transfers) == 1
    assert len(wake.calls) == 1


def test_same_key_with_a_different_body_is_refused(store, cache, wake, alice):
    key = fresh_key()
    accept(store, movement(DEPOSIT, None, alice, 1), cache=cache, wake=wake, key=key)
    for replay_cache in (cache, FakeIdempotencyCache()):  # from Redis, and from PostgreSQL
        result = accept(store, movement(DEPOSIT, None, alice, 2), cache=replay_cache, key=key)
        assert isinstance(result, Failure)
        assert result.code == "idempotency_key_reused"
    assert len(store.state.transfers) == 1
    assert len(wake.calls) == 1


def test_replay_from_the_database_refills_the_cache_for_a_day(store, cache, alice):
    key = fresh_key()
    first = accept(store, movement(DEPOSIT, None, alice), cache=cache, key=key)
    cache.forget()
    second = accept(store, movement(DEPOSIT, None, alice), cache=cache, key=key)
    assert second == Response(202, first.body, replayed=True)
    cached_key = accept_service.CACHE_NAMESPACE + key
    assert cache.get(TEST_API_KEY_ID, cached_key) is not None
    assert cache.ttls[(TEST_API_KEY_ID, cached_key)] == limits.idempotency_ttl_seconds


def test_a_cached_answer_does_not_touch_the_database(store, cache, alice):
    key = fresh_key()
    first = accept(store, movement(DEPOSIT, None, alice), cache=cache, key=key)
    opened = store.opened
    again = accept(store, movement(DEPOSIT, None, alice), cache=cache, key=key)
    assert again == Response(202, first.body, replayed=True)
    assert store.opened == opened


def test_a_replay_shows_the_transfer_as_accepted_even_once_posted(store, alice):
    key = fresh_key()
    first = accept(store, movement(DEPOSIT, None, alice, 5), key=key)
    posting.post_transfers(store, [accepted_id(first)])
    assert store.status(accepted_id(first)) == "posted"
    again = accept(store, movement(DEPOSIT, None, alice, 5), key=key)
    assert again == Response(202, first.body, replayed=True)


def test_the_key_lives_as_long_as_its_transfer_not_24_hours(store, alice):
    """A retry two days later, with the cache long gone, still finds the transfer."""
    key = fresh_key()
    first = accept(store, movement(DEPOSIT, None, alice, 5), key=key)
    store.advance(2 * limits.idempotency_ttl_seconds)
    again = accept(store, movement(DEPOSIT, None, alice, 5), key=key)
    assert again == Response(202, first.body, replayed=True)
    assert len(store.state.transfers) == 1


def test_idempotency_keys_are_scoped_to_the_api_key():
    store = FakeStore(api_key_ids=("key_a", "key_b"))
    alice = new_account(store)
    for api_key_id in ("key_a", "key_b"):
        result = accept(
            store, movement(DEPOSIT, None, alice), key="same", api_key=admin_key(api_key_id)
        )
        assert result.replayed is False
    assert len(store.state.transfers) == 2


ACCEPT_ERRORS = [
    ("deposit_unknown", DEPOSIT, None, "acc_nope", 1, "account_not_found"),
    ("deposit_nothing_named", DEPOSIT, None, None, 1, "account_not_found"),
    ("withdrawal_unknown", WITHDRAWAL, "acc_nope", None, 1, "account_not_found"),
    ("transfer_unknown_source", TRANSFER, "acc_nope", "bob", 1, "account_not_found"),
    ("transfer_unknown_destination", TRANSFER, "alice", "acc_nope", 1, "account_not_found"),
    ("transfer_nothing_named", TRANSFER, None, None, 1, "account_not_found"),
    ("same_account", TRANSFER, "alice", "alice", 1, "same_account"),
    ("currency_mismatch", TRANSFER, "alice", "claire_eur", 1, "currency_mismatch"),
    ("system_source", TRANSFER, "system", "alice", 1, "system_account_not_allowed"),
    ("system_destination", TRANSFER, "alice", "system", 1, "system_account_not_allowed"),
    ("system_deposit", DEPOSIT, None, "system", 1, "system_account_not_allowed"),
    ("system_withdrawal", WITHDRAWAL, "system", None, 1, "system_account_not_allowed"),
    ("zero", DEPOSIT, None, "alice", 0, "invalid_amount"),
    ("negative", WITHDRAWAL, "alice", None, -1, "invalid_amount"),
    ("too_big", TRANSFER, "alice", "bob", 2**63, "invalid_amount"),
    ("bool", DEPOSIT, None, "alice", True, "invalid_amount"),
    ("float", DEPOSIT, None, "alice", 1.0, "invalid_amount"),
]


@pytest.mark.parametrize(
    ("kind", "source", "destination", "amount", "code"),
    [case[1:] for case in ACCEPT_ERRORS],
    ids=[case[0] for case in ACCEPT_ERRORS],
)
def test_a_refused_transfer_stores_nothing_and_wakes_nothing(
    store, cache, wake, alice, bob, claire_eur, kind, source, destination, amount, code
):
    names = {"alice": alice, "bob": bob, "claire_eur": claire_eur}
    names["system"] = store.system_account_id("USD")
    commits_before = store.commits
    key = fresh_key()
    request = movement(kind, names.get(source, source), names.get(destination, destination), amount)
    result = accept(store, request, cache=cache, wake=wake, key=key)
    assert isinstance(result, Failure)
    assert result.code == code
    assert result.detail
    assert store.state.transfers == {}
    assert store.commits == commits_before
    assert (TEST_API_KEY_ID, accept_service.CACHE_NAMESPACE + key) not in cache.data
    assert wake.calls == []


def test_a_refused_request_may_be_retried_with_the_same_key(store, alice):
    key = fresh_key()
    refused = accept(store, movement(DEPOSIT, None, "acc_nope"), key=key)
    assert isinstance(refused, Failure)
    retried = accept(store, movement(DEPOSIT, None, alice), key=key)
    assert accepted_id(retried)
    assert retried.replayed is False


def pending_write(store: FakeStore, account_id: str, key: str, **changes) -> PendingWrite:
    transfer = NewTransfer(
        id=changes.pop("id", f"tr_{key}"),
        kind="deposit",
        source_account_id=store.system_account_id("USD"),
        destination_account_id=account_id,
        amount=5,
        currency="USD",
        description=None,
        metadata={},
    )
    return PendingWrite(transfer, TEST_API_KEY_ID, key, changes.pop("request_hash", "same"))


# The old "409 while a request with the same key runs" no longer applies to money
# movements: the unique index makes the second request wait for the first.


def test_a_duplicate_of_a_request_in_flight_waits_for_it_then_replays_it(store, alice):
    with store() as first:
        first.transfers.add_pending([pending_write(store, alice, "k-commit")])
        store.on_lock_wait = lambda holder: holder.commit()
        result = accept(
            store, movement(DEPOSIT, None, alice, 5), key="k-commit", request_hash="same"
        )
    assert isinstance(result, Response)
    assert (result.status_code, result.replayed) == (202, True)
    assert result.body["id"] == "tr_k-commit"
    assert len(store.state.transfers) == 1


def test_a_duplicate_acts_itself_when_the_request_in_flight_rolls_back(store, alice):
    with store() as first:
        first.transfers.add_pending([pending_write(store, alice, "k-rollback")])
        store.on_lock_wait = lambda holder: holder.rollback()
        result = accept(
            store, movement(DEPOSIT, None, alice, 5), key="k-rollback", request_hash="same"
        )
    assert isinstance(result, Response)
    assert (result.status_code, result.replayed) == (202, False)
    assert result.body["id"] != "tr_k-rollback"
    assert [t.idempotency_key for t in store.state.transfers.values()] == ["k-rollback"]


def test_a_duplicate_that_waits_too_long_is_a_storage_error_not_a_second_transfer(store, alice):
    with store() as first:
        first.transfers.add_pending([pending_write(store, alice, "k-stuck")])
        with pytest.raises(StorageUnavailableError):
            accept(store, movement(DEPOSIT, None, alice, 5), key="k-stuck", request_hash="same")
    assert store.state.transfers == {}


def test_writes_stored_together_each_get_their_transfer_or_what_their_key_made(store, alice):
    existing = accepted_id(
        accept(store, movement(DEPOSIT, None, alice, 5), key="old", request_hash="same")
    )
    writes = [
        pending_write(store, alice, "new-2"),
        pending_write(store, alice, "old"),
        pending_write(store, alice, "new-1"),
    ]
    results = accept_service.store_pending(store, writes)
    assert isinstance(results[0], TransferRecord) and results[0].id == "tr_new-2"
    assert not isinstance(results[1], TransferRecord)
    assert results[1].record.id == existing
    assert isinstance(results[2], TransferRecord) and results[2].id == "tr_new-1"
    assert counted(store, "transfers.add_pending") == 2  # the first accept and this group


def test_one_bad_write_does_not_refuse_the_others_stored_with_it(store, alice):
    bad = pending_write(store, "acc_gone", "bad")  # breaks a foreign key
    good = pending_write(store, alice, "good")
    # What the bad write's caller is told is not the point here.
    with contextlib.suppress(Exception):
        accept_service.store_pending(store, [bad, good])
    assert "tr_good" in store.state.transfers


@pytest.mark.parametrize("first_use", ["account", "deposit"])
def test_an_answer_does_not_depend_on_whether_the_cache_remembers(store, alice, first_use):
    def use(kind: str, key: str, cache: FakeIdempotencyCache) -> str:
        if kind == "account":
            result = open_account(store, cache, key=key)
        else:
            result = accept(store, movement(DEPOSIT, None, alice), cache=cache, key=key)
        return "acted" if isinstance(result, Response) and not result.replayed else str(result)

    second_use = "deposit" if first_use == "account" else "account"
    remembered = FakeIdempotencyCache()
    use(first_use, "key-remembered", remembered)
    with_cache = use(second_use, "key-remembered", remembered)
    forgotten = FakeIdempotencyCache()
    use(first_use, "key-forgotten", forgotten)
    forgotten.forget()
    without_cache = use(second_use, "key-forgotten", forgotten)
    assert with_cache == without_cache


# --- accept_batch ---------------------------------------------------------------------------


def test_a_batch_is_stored_in_one_transaction_in_item_order(store, wake, alice, bob):
    requests = [
        movement(DEPOSIT, None, alice, 10),
        movement(TRANSFER, alice, bob, 3),
        movement(WITHDRAWAL, bob, None, 1),
    ]
    commits = store.commits
    result = accept_batch(store, requests, wake=wake)
    ids = item_ids(result)
    assert store.commits == commits + 1
    body = result.body
    assert body["object"] == "transfer_batch"
    assert body["id"].startswith("bat_")
    assert body["atomic"] is False
    assert body["status"] == "pending"
    assert body["counts"] == {"pending": 3, "posted": 0, "rejected": 0, "quarantined": 0}
    assert [i["kind"] for i in body["items"]] == ["deposit", "transfer", "withdrawal"]
    assert all(i["batch_id"] == body["id"] for i in body["items"])
    seqs = [store.transfer(i).seq for i in ids]
    assert seqs == sorted(seqs), "acceptance order is item order"
    assert accept_service.get_batch(store, body["id"]) == body
    assert all(store.transfer(i).group_id is None for i in ids)


def test_an_empty_batch_is_refused(store):
    result = accept_batch(store, [])
    assert isinstance(result, Failure)
    assert result.code == "validation_error"
    assert store.opened == 0


def test_a_batch_of_too_many_items_is_refused_before_any_work(store, alice):
    opened = store.opened
    result = accept_batch(store, [movement(DEPOSIT, None, alice, 1)] * (limits.batch_items_max + 1))
    assert isinstance(result, Failure)
    assert result.code == "too_many_items"
    assert str(limits.batch_items_max) in result.detail
    assert store.opened == opened


def test_a_batch_of_the_most_items_is_accepted(store, alice):
    result = accept_batch(store, [movement(DEPOSIT, None, alice, 1)] * limits.batch_items_max)
    assert len(item_ids(result)) == limits.batch_items_max
    assert len(store.state.transfers) == limits.batch_items_max


@pytest.mark.parametrize("bad_index", [0, 1, 3])
@pytest.mark.parametrize("atomic", [False, True])
def test_one_invalid_item_refuses_the_whole_batch_with_its_index(
    store, wake, alice, bob, bad_index, atomic
):
    requests = [movement(TRANSFER, alice, bob, 1) for _ in range(4)]
    requests[bad_index] = movement(TRANSFER, alice, alice, 1)
    key = fresh_key()
    result = accept_batch(store, requests, atomic=atomic, wake=wake, key=key)
    assert isinstance(result, Failure)
    assert result.code == "same_account"
    assert result.extra == {"item_index": bad_index}
    assert result.detail.startswith(f"items[{bad_index}]: ")
    assert store.state.transfers == {} and store.state.batches == {}
    assert wake.calls == []
    # Nothing was stored, so the key is still free for a corrected request.
    fixed = [movement(TRANSFER, alice, bob, 1) for _ in range(4)]
    assert len(item_ids(accept_batch(store, fixed, atomic=atomic, key=key))) == 4


def accounts_on_distinct_shards(store: FakeStore, shards: int, count: int) -> list[str]:
    found: dict[int, str] = {}
    while len(found) < count:
        account_id = new_account(store)
        found.setdefault(posting_shard(account_id, shards), account_id)
    return list(found.values())


def test_an_atomic_batch_is_one_group_headed_by_its_first_item_on_its_shard(store, wake):
    shards = 16
    a, b, c = accounts_on_distinct_shards(store, shards, 3)
    requests = [
        movement(TRANSFER, b, a, 1),
        movement(TRANSFER, c, a, 1),
        movement(TRANSFER, a, b, 1),
    ]
    ids = item_ids(accept_batch(store, requests, atomic=True, wake=wake, shards=shards))
    head_shard = posting_shard(b, shards)
    assert [store.transfer(i).group_id for i in ids] == [ids[0]] * 3
    assert [store.transfer(i).shard for i in ids] == [head_shard] * 3
    assert wake.shards == [head_shard]


def test_a_plain_batch_puts_each_item_on_its_own_shard_and_wakes_each_once(store, wake):
    shards = 16
    a, b, c = accounts_on_distinct_shards(store, shards, 3)
    requests = [
        movement(TRANSFER, b, a, 1),
        movement(TRANSFER, c, a, 1),
        movement(TRANSFER, b, c, 1),
    ]
    ids = item_ids(accept_batch(store, requests, wake=wake, shards=shards))
    expected = [posting_shard(x, shards) for x in (b, c, b)]
    assert [store.transfer(i).shard for i in ids] == expected
    assert wake.shards == sorted(set(expected))
    assert all(c.open_units_of_work == 0 for c in wake.calls)
    assert all(set(ids) & c.committed_pending for c in wake.calls)


def test_an_atomic_batch_of_one_item_is_no_group(store, alice):
    [transfer_id] = item_ids(accept_batch(store, [movement(DEPOSIT, None, alice)], atomic=True))
    assert store.transfer(transfer_id).group_id is None


def test_a_batch_replays_by_key_even_once_posted(store, wake, alice, bob):
    requests = [movement(DEPOSIT, None, alice, 10), movement(TRANSFER, alice, bob, 3)]
    key = fresh_key()
    first = accept_batch(store, requests, atomic=True, wake=wake, key=key)
    posting.post_transfers(store, item_ids(first))
    assert store.statuses(item_ids(first)) == ["posted", "posted"]
    again = accept_batch(store, requests, atomic=True, wake=wake, key=key)
    assert again == Response(202, first.body, replayed=True)
    assert len(store.state.transfers) == 2
    assert len(wake.calls) == 1


def test_a_batch_key_reused_with_another_body_is_refused_and_stores_nothing(store, alice):
    key = fresh_key()
    accept_batch(store, [movement(DEPOSIT, None, alice, 10)], key=key)
    result = accept_batch(store, [movement(DEPOSIT, None, alice, 11)], key=key)
    assert isinstance(result, Failure)
    assert result.code == "idempotency_key_reused"
    assert len(store.state.transfers) == 1 and len(store.state.batches) == 1


def test_batch_keys_are_scoped_to_the_api_key():
    store = FakeStore(api_key_ids=("key_a", "key_b"))
    alice = new_account(store)
    for api_key_id in ("key_a", "key_b"):
        result = accept_batch(
            store, [movement(DEPOSIT, None, alice)], key="same", api_key=admin_key(api_key_id)
        )
        assert result.replayed is False
    assert len(store.state.batches) == 2


def test_a_batch_shows_its_progress(store, alice):
    fund(store, alice, 5)
    requests = [movement(WITHDRAWAL, alice, None, 5), movement(WITHDRAWAL, alice, None, 5)]
    result = accept_batch(store, requests)
    first, second = item_ids(result)
    posting.post_transfers(store, [first])
    progress = accept_service.get_batch(store, result.body["id"])
    assert progress["status"] == "pending"
    assert progress["counts"] == {"pending": 1, "posted": 1, "rejected": 0, "quarantined": 0}
    posting.post_transfers(store, [second])
    done = accept_service.get_batch(store, result.body["id"])
    assert done["status"] == "completed"
    assert done["counts"] == {"pending": 0, "posted": 1, "rejected": 1, "quarantined": 0}
    assert [i["rejection_reason"] for i in done["items"]] == [None, "insufficient_funds"]


def test_reading_unknown_transfers_and_batches_fails(store):
    assert accept_service.get_transfer(store, "tr_nope").code == "transfer_not_found"
    assert accept_service.get_batch(store, "bat_nope").code == "batch_not_found"
