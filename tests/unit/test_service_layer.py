"""The use cases, run against an in-memory unit of work, store only what they should, act once
per idempotency key, enqueue only committed transfers, post each transfer once, and page
through everything exactly once."""

from __future__ import annotations

import hashlib
import itertools
import logging
import math
from datetime import timedelta
from typing import Any

import pytest
from fakes import (
    TEST_API_KEY_ID,
    FakeIdempotencyCache,
    FakeStore,
    RecordingEnqueue,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ledger_core.domain import limits
from ledger_core.domain.model import Posted, Rejected, RejectionReason, TransferKind
from ledger_core.service_layer import ledger
from ledger_core.service_layer.access import (
    SECRET_PREFIX,
    Scope,
    add_custom_currency,
    authenticate,
    create_api_key,
    hash_secret,
    scope_allows,
)
from ledger_core.service_layer.errors import Failure, Response
from ledger_core.service_layer.idempotency import request_fingerprint, run_idempotent
from ledger_core.service_layer.pagination import Page, encode_cursor

DEPOSIT, WITHDRAWAL, TRANSFER = TransferKind.DEPOSIT, TransferKind.WITHDRAWAL, TransferKind.TRANSFER
_keys = itertools.count()


def fresh_key() -> str:
    return f"idem-{next(_keys)}"


def open_account(
    store: FakeStore,
    cache: FakeIdempotencyCache,
    *,
    currency: str = "USD",
    overdraft: bool = False,
    name: str | None = None,
    metadata: dict[str, str] | None = None,
    key: str | None = None,
    api_key_id: str = TEST_API_KEY_ID,
) -> Response | Failure:
    body = {"currency": currency, "allow_overdraft": overdraft, "name": name, "metadata": metadata}
    return ledger.open_account(
        store,
        cache,
        api_key_id=api_key_id,
        idempotency_key=key,
        request_hash=request_fingerprint("POST", "/v1/accounts", body),
        currency=currency,
        name=name,
        metadata=metadata or {},
        allow_overdraft=overdraft,
    )


def new_account(
    store: FakeStore, cache: FakeIdempotencyCache, currency: str = "USD", *, overdraft=False
) -> str:
    result = open_account(store, cache, currency=currency, overdraft=overdraft)
    assert isinstance(result, Response), result
    return result.body["id"]


def accept(
    store: FakeStore,
    cache: FakeIdempotencyCache,
    enqueue: Any,
    kind: TransferKind,
    *,
    source: str | None = None,
    destination: str | None = None,
    amount: Any = 100,
    key: str | None = None,
    api_key_id: str = TEST_API_KEY_ID,
    description: str | None = None,
    metadata: dict[str, str] | None = None,
) -> Response | Failure:
    body = {"kind": kind.value, "source": source, "destination": destination, "amount": amount}
    return ledger.accept_transfer(
        store,
        cache,
        enqueue,
        api_key_id=api_key_id,
        idempotency_key=key or fresh_key(),
        request_hash=request_fingerprint("POST", f"/v1/{kind.value}s", body),
        kind=kind,
        source_account_id=source,
        destination_account_id=destination,
        amount=amount,
        description=description,
        metadata=metadata or {},
    )


def accepted_id(result: Response | Failure) -> str:
    assert isinstance(result, Response), result
    assert result.status_code == 202
    return result.body["id"]


def system_account(store: FakeStore, currency: str) -> str:
    [account_id] = [
        a.id for a in store.state.accounts.values() if a.is_system and a.currency == currency
    ]
    return account_id


def fund(store, cache, enqueue, account_id: str, amount: int) -> None:
    transfer_id = accepted_id(
        accept(store, cache, enqueue, DEPOSIT, destination=account_id, amount=amount)
    )
    [outcome] = ledger.post_transfers(store, [transfer_id])
    assert isinstance(outcome, Posted)


def account_json(store: FakeStore, account_id: str) -> dict[str, Any]:
    body = ledger.get_account(store, account_id)
    assert isinstance(body, dict), body
    return body


# --- open_account ---------------------------------------------------------------------------


def test_open_account_returns_201_with_the_stored_account(store, cache):
    result = open_account(store, cache, name="Alice", metadata={"team": "a"}, overdraft=True)
    assert isinstance(result, Response)
    assert result.status_code == 201
    assert result.replayed is False
    body = result.body
    assert body["id"].startswith("acc_")
    assert body["object"] == "account"
    assert body["currency"] == "USD"
    assert body["name"] == "Alice"
    assert body["metadata"] == {"team": "a"}
    assert body["allow_overdraft"] is True
    assert body["is_system"] is False
    assert body["balance"] == {"posted": 0, "pending": 0, "available": 0}
    assert body["created_at"].endswith("Z")
    assert account_json(store, body["id"]) == body


def test_system_account_is_created_once_per_currency(store, cache):
    for currency in ("USD", "USD", "EUR", "USD", "EUR", "JPY"):
        new_account(store, cache, currency)
    system = [a for a in store.state.accounts.values() if a.is_system]
    assert sorted(a.currency for a in system) == ["EUR", "JPY", "USD"]
    assert all(a.allow_overdraft and a.balance == 0 for a in system)
    assert len(store.state.accounts) == 6 + 3


@pytest.mark.parametrize("currency", ["XYZ", "usd", "GOLD", "US", ""])
def test_unknown_currency_fails_and_stores_nothing(store, cache, currency):
    result = open_account(store, cache, currency=currency, key=fresh_key())
    assert isinstance(result, Failure)
    assert result.code == "unknown_currency"
    assert store.state.accounts == {}
    assert store.state.idempotency == {}
    assert store.commits == 0
    assert cache.data == {}


def test_custom_currency_can_be_used_once_added(store, cache):
    assert open_account(store, cache, currency="GOLD").code == "unknown_currency"
    assert add_custom_currency(store, code="GOLD", exponent=0) is None
    account_id = new_account(store, cache, "GOLD")
    assert account_json(store, account_id)["currency"] == "GOLD"
    system_account(store, "GOLD")


def test_open_account_without_a_key_acts_every_time(store, cache):
    first, second = new_account(store, cache), new_account(store, cache)
    assert first != second
    assert store.state.idempotency == {}
    assert cache.gets == cache.puts == 0


def test_open_account_with_the_same_key_opens_once(store, cache):
    key = fresh_key()
    first = open_account(store, cache, key=key)
    second = open_account(store, cache, key=key)
    assert isinstance(first, Response)
    assert isinstance(second, Response)
    assert second.replayed is True
    assert second.status_code == 201
    assert second.body == first.body
    assert len([a for a in store.state.accounts.values() if not a.is_system]) == 1


# --- accept_transfer ------------------------------------------------------------------------


@pytest.fixture
def alice(store, cache) -> str:
    return new_account(store, cache)


@pytest.fixture
def bob(store, cache) -> str:
    return new_account(store, cache)


@pytest.fixture
def claire_eur(store, cache) -> str:
    return new_account(store, cache, "EUR")


def assert_pending_transfer(store: FakeStore, result, *, kind, source, destination, amount):
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
    assert body["created_at"].endswith("Z")
    assert (body["source_account_id"], body["destination_account_id"]) == (source, destination)
    assert body["amount"] == amount
    assert body["currency"] == "USD"
    assert ledger.get_transfer(store, body["id"]) == body


def test_deposit_comes_from_the_currency_system_account(store, cache, enqueue, alice):
    result = accept(store, cache, enqueue, DEPOSIT, destination=alice, amount=250)
    assert_pending_transfer(
        store,
        result,
        kind=DEPOSIT,
        source=system_account(store, "USD"),
        destination=alice,
        amount=250,
    )


def test_withdrawal_goes_to_the_currency_system_account(store, cache, enqueue, alice):
    result = accept(store, cache, enqueue, WITHDRAWAL, source=alice, amount=70)
    assert_pending_transfer(
        store,
        result,
        kind=WITHDRAWAL,
        source=alice,
        destination=system_account(store, "USD"),
        amount=70,
    )


def test_transfer_moves_between_the_two_named_accounts(store, cache, enqueue, alice, bob):
    result = accept(store, cache, enqueue, TRANSFER, source=alice, destination=bob, amount=5)
    assert_pending_transfer(store, result, kind=TRANSFER, source=alice, destination=bob, amount=5)


def test_system_account_of_the_account_currency_is_used(store, cache, enqueue, alice, claire_eur):
    result = accept(store, cache, enqueue, DEPOSIT, destination=claire_eur, amount=1)
    assert result.body["source_account_id"] == system_account(store, "EUR")
    assert result.body["currency"] == "EUR"


def test_description_and_metadata_are_kept(store, cache, enqueue, alice):
    result = accept(
        store, cache, enqueue, DEPOSIT, destination=alice, description="pay", metadata={"a": "b"}
    )
    assert (result.body["description"], result.body["metadata"]) == ("pay", {"a": "b"})


def test_pending_transfer_shows_in_both_balances(store, cache, enqueue, alice, bob):
    fund(store, cache, enqueue, alice, 1000)
    accept(store, cache, enqueue, TRANSFER, source=alice, destination=bob, amount=300)
    assert account_json(store, alice)["balance"] == {
        "posted": 1000,
        "pending": -300,
        "available": 700,
    }
    assert account_json(store, bob)["balance"] == {"posted": 0, "pending": 300, "available": 0}


def test_enqueue_is_called_once_after_the_commit(store, cache, enqueue, alice):
    transfer_id = accepted_id(accept(store, cache, enqueue, DEPOSIT, destination=alice))
    [call] = enqueue.calls
    assert call.transfer_id == transfer_id
    # The transfer was committed, PENDING, and no transaction was open any more.
    assert call.committed_status == "pending"
    assert call.open_units_of_work == 0


def test_enqueue_that_raises_still_returns_202(store, cache, alice, caplog):
    failing = RecordingEnqueue(store, fail_with=ConnectionError("broker down"))
    with caplog.at_level(logging.ERROR, logger="ledger_core.service_layer.ledger"):
        transfer_id = accepted_id(accept(store, cache, failing, DEPOSIT, destination=alice))
    assert len(failing.calls) == 1
    assert store.transfer_status(transfer_id) == "pending"
    assert "enqueue failed" in caplog.text


def test_replayed_transfer_is_not_enqueued_again(store, cache, enqueue, alice):
    key = fresh_key()
    first = accept(store, cache, enqueue, DEPOSIT, destination=alice, key=key)
    second = accept(store, cache, enqueue, DEPOSIT, destination=alice, key=key)
    assert second.replayed is True
    assert second.body == first.body
    assert len(store.state.transfers) == 1
    assert len(enqueue.calls) == 1


def test_same_key_with_a_different_body_is_refused(store, cache, enqueue, alice):
    key = fresh_key()
    accept(store, cache, enqueue, DEPOSIT, destination=alice, amount=1, key=key)
    result = accept(store, cache, enqueue, DEPOSIT, destination=alice, amount=2, key=key)
    assert isinstance(result, Failure)
    assert result.code == "idempotency_key_reused"
    assert len(store.state.transfers) == 1
    assert len(enqueue.calls) == 1


def test_idempotency_keys_are_scoped_to_the_api_key(cache):
    store = FakeStore(api_key_ids=("key_a", "key_b"))
    enqueue = RecordingEnqueue(store)
    alice = new_account(store, cache)
    for api_key_id in ("key_a", "key_b"):
        result = accept(
            store, cache, enqueue, DEPOSIT, destination=alice, key="same", api_key_id=api_key_id
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
def test_refused_transfer_stores_nothing_and_enqueues_nothing(
    store, cache, enqueue, alice, bob, claire_eur, kind, source, destination, amount, code
):
    names = {"alice": alice, "bob": bob, "claire_eur": claire_eur}
    names["system"] = system_account(store, "USD")
    commits_before = store.commits
    key = fresh_key()
    result = accept(
        store,
        cache,
        enqueue,
        kind,
        source=names.get(source, source),
        destination=names.get(destination, destination),
        amount=amount,
        key=key,
    )
    assert isinstance(result, Failure)
    assert result.code == code
    assert result.detail
    assert store.state.transfers == {}
    assert store.state.idempotency == {}
    assert store.commits == commits_before
    assert (TEST_API_KEY_ID, key) not in cache.data
    assert enqueue.calls == []


@pytest.mark.parametrize("kind", [DEPOSIT, WITHDRAWAL])
def test_naming_the_system_account_in_a_deposit_or_withdrawal_is_refused_as_such(
    store, cache, enqueue, alice, kind
):
    system = system_account(store, "USD")
    side = {"destination": system} if kind is DEPOSIT else {"source": system}
    result = accept(store, cache, enqueue, kind, **side)
    assert isinstance(result, Failure)
    assert result.code == "system_account_not_allowed"


@pytest.mark.parametrize("kind", [DEPOSIT, WITHDRAWAL])
def test_naming_the_system_account_in_a_deposit_or_withdrawal_is_refused(
    store, cache, enqueue, alice, kind
):
    system = system_account(store, "USD")
    side = {"destination": system} if kind is DEPOSIT else {"source": system}
    result = accept(store, cache, enqueue, kind, **side)
    assert isinstance(result, Failure)
    assert store.state.transfers == {}
    assert enqueue.calls == []


def test_refused_request_may_be_retried_with_the_same_key(store, cache, enqueue, alice):
    key = fresh_key()
    refused = accept(store, cache, enqueue, DEPOSIT, destination="acc_nope", key=key)
    assert isinstance(refused, Failure)
    retried = accept(store, cache, enqueue, DEPOSIT, destination=alice, key=key)
    assert accepted_id(retried)
    assert retried.replayed is False


# --- run_idempotent -------------------------------------------------------------------------


class Action:
    """An action that opens nothing itself and counts its runs."""

    def __init__(self, status: int = 201, after_commit=None, result=None) -> None:
        self.runs = 0
        self._status = status
        self._after_commit = after_commit
        self._result = result

    def __call__(self, uow: Any):
        self.runs += 1
        if self._result is not None:
            return self._result
        uow.currencies.add_custom(f"RUN{self.runs}", 0)
        return Response(self._status, {"run": self.runs}), self._after_commit


def idempotent(store, cache, action, *, key: str | None = "k1", request_hash: str = "h1"):
    return run_idempotent(
        store,
        cache,
        api_key_id=TEST_API_KEY_ID,
        key=key,
        request_hash=request_hash,
        action=action,
    )


def test_first_request_acts_commits_stores_and_caches(store, cache):
    action = Action()
    result = idempotent(store, cache, action)
    assert result == Response(201, {"run": 1})
    assert action.runs == 1
    assert store.commits == 1
    assert "RUN1" in store.state.custom_currencies
    row = store.state.idempotency[(TEST_API_KEY_ID, "k1")]
    assert (row.request_hash, row.status_code, row.response_body) == ("h1", 201, {"run": 1})
    assert cache.get(TEST_API_KEY_ID, "k1") == ("h1", 201, {"run": 1})


def test_same_key_and_hash_replays_without_acting(store, cache):
    action = Action()
    first = idempotent(store, cache, action)
    second = idempotent(store, cache, action)
    assert second == Response(201, first.body, replayed=True)
    assert action.runs == 1


def test_same_key_with_another_hash_is_refused(store, cache):
    action = Action()
    idempotent(store, cache, action)
    result = idempotent(store, cache, action, request_hash="h2")
    assert isinstance(result, Failure)
    assert result.code == "idempotency_key_reused"
    assert action.runs == 1


def test_replay_from_the_database_when_the_cache_forgot(store, cache):
    action = Action()
    first = idempotent(store, cache, action)
    cache.forget()
    opened = store.opened
    second = idempotent(store, cache, action)
    assert second == Response(201, first.body, replayed=True)
    assert action.runs == 1
    assert store.opened == opened + 1
    # The answer found in the database is put back in the cache.
    assert cache.get(TEST_API_KEY_ID, "k1") == ("h1", 201, first.body)
    assert isinstance(idempotent(store, FakeIdempotencyCache(), action, request_hash="h2"), Failure)


def test_cache_hit_does_not_touch_the_database(store, cache):
    cache.put(TEST_API_KEY_ID, "k1", ("h1", 202, {"cached": True}), ttl_seconds=60)
    action = Action()
    result = idempotent(store, cache, action)
    assert result == Response(202, {"cached": True}, replayed=True)
    reused = idempotent(store, cache, action, request_hash="other")
    assert isinstance(reused, Failure)
    assert reused.code == "idempotency_key_reused"
    assert store.opened == 0
    assert action.runs == 0


def test_key_held_by_a_running_request_is_in_use(store, cache):
    action = Action()
    with store() as running:
        assert running.try_advisory_lock("idempotency", TEST_API_KEY_ID, "k1")
        result = idempotent(store, cache, action)
        # Another key, or another API key's same key, is not blocked.
        assert isinstance(idempotent(store, cache, Action(), key="k2"), Response)
    assert isinstance(result, Failure)
    assert result.code == "idempotency_key_in_use"
    assert result.extra["retry_after_seconds"] >= 1
    assert action.runs == 0
    assert (TEST_API_KEY_ID, "k1") not in store.state.idempotency
    # Once the first request's transaction ended, the key is free.
    assert isinstance(idempotent(store, cache, action), Response)
    assert action.runs == 1


def test_request_without_a_key_acts_every_time_and_stores_nothing(store, cache):
    action = Action()
    idempotent(store, cache, action, key=None)
    idempotent(store, cache, action, key=None)
    assert action.runs == 2
    assert store.state.idempotency == {}
    assert store.advisory_locks == {}
    assert cache.gets == cache.puts == 0


def test_failure_is_neither_stored_nor_committed(store, cache):
    action = Action(result=Failure("nope", "refused"))
    assert idempotent(store, cache, action) == Failure("nope", "refused")
    assert store.commits == 0
    assert cache.data == {}
    assert store.state.idempotency == {}


def test_action_that_raises_leaves_nothing_behind(store, cache):
    def explode(uow):
        uow.currencies.add_custom("HALF", 0)
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        idempotent(store, cache, explode)
    assert store.state.custom_currencies == {}
    assert store.state.idempotency == {}
    assert store.advisory_locks == {}
    # The key was not used up.
    assert isinstance(idempotent(store, cache, Action()), Response)


def test_after_commit_runs_once_after_the_commit_outside_the_transaction(store, cache):
    seen = []

    def after_commit():
        seen.append((store.commits, len(store.open_uows), dict(store.state.custom_currencies)))

    idempotent(store, cache, Action(after_commit=after_commit))
    assert seen == [(1, 0, {"RUN1": 0})]


def test_expired_key_acts_again(store, cache):
    action = Action()
    idempotent(store, cache, action)
    cache.forget()  # Redis keeps it as long as PostgreSQL: both expire
    store.advance(limits.idempotency_ttl_seconds + 1)
    result = idempotent(store, cache, action, request_hash="h2")
    assert result == Response(201, {"run": 2})
    assert store.state.idempotency[(TEST_API_KEY_ID, "k1")].request_hash == "h2"


def test_fresh_response_is_cached_for_the_full_ttl(store, cache):
    idempotent(store, cache, Action())
    assert cache.ttls[(TEST_API_KEY_ID, "k1")] == limits.idempotency_ttl_seconds


def test_refilled_cache_lives_only_as_long_as_the_stored_key(store, cache):
    """A replay 23 hours in refills Redis for the hour left, not for a fresh 24 hours,
    or Redis would go on refusing a key PostgreSQL already lets be used again."""
    idempotent(store, cache, Action())
    cache.forget()
    store.advance(limits.idempotency_ttl_seconds - 3600)
    replayed = idempotent(store, cache, Action())
    assert replayed.replayed
    assert 3590 <= cache.ttls[(TEST_API_KEY_ID, "k1")] <= 3600


def test_request_fingerprint_ignores_key_order_only():
    base = request_fingerprint("POST", "/v1/deposits", {"a": 1, "b": {"c": 2, "d": 3}})
    assert base == request_fingerprint("POST", "/v1/deposits", {"b": {"d": 3, "c": 2}, "a": 1})
    assert len(base) == 64
    assert int(base, 16) >= 0
    others = {
        request_fingerprint("PUT", "/v1/deposits", {"a": 1, "b": {"c": 2, "d": 3}}),
        request_fingerprint("POST", "/v1/withdrawals", {"a": 1, "b": {"c": 2, "d": 3}}),
        request_fingerprint("POST", "/v1/deposits", {"a": 2, "b": {"c": 2, "d": 3}}),
        request_fingerprint("POST", "/v1/deposits", {"a": "1", "b": {"c": 2, "d": 3}}),
        request_fingerprint("POST", "/v1/deposits", {"a": 1}),
    }
    assert base not in others
    assert len(others) == 5


# --- post_transfers -------------------------------------------------------------------------


def test_posting_a_deposit_moves_money_from_the_system_account(store, cache, enqueue, alice):
    transfer_id = accepted_id(accept(store, cache, enqueue, DEPOSIT, destination=alice, amount=40))
    [outcome] = ledger.post_transfers(store, [transfer_id])
    system = system_account(store, "USD")
    assert isinstance(outcome, Posted)
    assert store.balances()[alice] == 40
    assert store.balances()[system] == -40
    transfer = ledger.get_transfer(store, transfer_id)
    assert transfer["status"] == "posted"
    assert transfer["posted_at"].endswith("Z")
    assert account_json(store, alice)["balance"] == {"posted": 40, "pending": 0, "available": 40}
    entries = [(e.account_id, e.amount, e.balance_after) for e in store.state.entries]
    assert entries == [(system, -40, -40), (alice, 40, 40)]


def test_posting_twice_posts_once(store, cache, enqueue, alice):
    transfer_id = accepted_id(accept(store, cache, enqueue, DEPOSIT, destination=alice, amount=40))
    assert len(ledger.post_transfers(store, [transfer_id, transfer_id])) == 1
    commits = store.commits
    assert ledger.post_transfers(store, [transfer_id]) == []
    assert store.commits == commits
    assert store.balances()[alice] == 40
    assert len(store.state.entries) == 2


def test_insufficient_funds_rejects_and_changes_no_balance(store, cache, enqueue, alice):
    fund(store, cache, enqueue, alice, 100)
    balances = store.balances()
    transfer_id = accepted_id(accept(store, cache, enqueue, WITHDRAWAL, source=alice, amount=101))
    outcomes = ledger.post_transfers(store, [transfer_id])
    assert outcomes == [Rejected(transfer_id, RejectionReason.INSUFFICIENT_FUNDS)]
    assert store.balances() == balances
    assert len(store.state.entries) == 2  # those of the funding deposit only
    transfer = ledger.get_transfer(store, transfer_id)
    assert (transfer["status"], transfer["rejection_reason"]) == ("rejected", "insufficient_funds")
    assert transfer["posted_at"] is None
    assert account_json(store, alice)["balance"] == {"posted": 100, "pending": 0, "available": 100}
    # A rejected transfer is final too.
    assert ledger.post_transfers(store, [transfer_id]) == []


def test_overdraft_account_may_be_withdrawn_into_the_negative(store, cache, enqueue):
    account_id = new_account(store, cache, overdraft=True)
    transfer_id = accepted_id(accept(store, cache, enqueue, WITHDRAWAL, source=account_id))
    [outcome] = ledger.post_transfers(store, [transfer_id])
    assert isinstance(outcome, Posted)
    assert store.balances()[account_id] == -100


def test_batch_posts_some_and_rejects_others(store, cache, enqueue, alice, bob):
    fund(store, cache, enqueue, alice, 100)
    ok = accepted_id(
        accept(store, cache, enqueue, TRANSFER, source=alice, destination=bob, amount=60)
    )
    too_much = accepted_id(
        accept(store, cache, enqueue, TRANSFER, source=alice, destination=bob, amount=60)
    )
    outcomes = {o.transfer_id: o for o in ledger.post_transfers(store, [ok, too_much])}
    # Whichever was accepted first posts; the other finds 40 left and is rejected.
    assert sorted(type(o).__name__ for o in outcomes.values()) == ["Posted", "Rejected"]
    assert store.balances()[alice] == 40
    assert store.balances()[bob] == 60


def test_posting_writes_one_event_per_final_transfer_in_the_same_commit(
    store, cache, enqueue, alice
):
    fund(store, cache, enqueue, alice, 10)
    rejected = accepted_id(accept(store, cache, enqueue, WITHDRAWAL, source=alice, amount=11))
    enqueued_deliveries: list[list[str]] = []
    ledger.post_transfers(store, [rejected], enqueue_deliveries=enqueued_deliveries.append)
    events = list(store.state.events.values())
    assert len(events) == 2  # the funding deposit's and the rejected withdrawal's
    # Ids made in one millisecond do not sort by creation, so find it by its transfer.
    assert [e["type"] for e in events if e["transfer_id"] == rejected] == ["transfer.rejected"]
    assert ledger.post_transfers(store, [rejected]) == []
    assert len(store.state.events) == 2  # a transfer is final once, so it has one event
    # Without webhook endpoints there is nothing to deliver, so nothing is enqueued.
    assert store.state.deliveries == []
    assert enqueued_deliveries == []


def test_ids_that_are_not_pending_transfers_post_nothing(store):
    assert ledger.post_transfers(store, ["tr_nope"]) == []
    assert ledger.post_transfers(store, []) == []
    assert store.commits == 0


def test_batch_size_is_bounded_after_removing_duplicates(store):
    limit = limits.posting_batch_size_max
    assert ledger.post_transfers(store, [f"tr_{i}" for i in range(limit)] * 2) == []
    with pytest.raises(ValueError, match="exceeds"):
        ledger.post_transfers(store, [f"tr_{i}" for i in range(limit + 1)])


operations = st.lists(
    st.tuples(
        st.sampled_from([DEPOSIT, WITHDRAWAL, TRANSFER]),
        st.integers(0, 3),
        st.integers(0, 3),
        st.one_of(st.integers(1, 300), st.sampled_from([2**62, 2**63 - 1])),
        st.booleans(),
    ),
    max_size=12,
)


@settings(
    max_examples=75,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(operations, st.lists(st.booleans(), min_size=4, max_size=4))
def test_books_always_balance(ops, overdrafts):
    """Whatever is accepted and posted, entries explain every balance and the books sum to 0."""
    store, cache = FakeStore(), FakeIdempotencyCache()
    enqueue = RecordingEnqueue(store)
    accounts = [new_account(store, cache, overdraft=o) for o in overdrafts]
    pending: list[str] = []
    for kind, i, j, amount, post_now in ops:
        if kind is TRANSFER:
            sides = {"source": accounts[i], "destination": accounts[j]}
        elif kind is DEPOSIT:
            sides = {"destination": accounts[i]}
        else:
            sides = {"source": accounts[i]}
        result = accept(store, cache, enqueue, kind, amount=amount, **sides)
        if isinstance(result, Response):
            pending.append(result.body["id"])
        else:
            assert kind is TRANSFER
            assert i == j
            assert result.code == "same_account"
        if post_now and pending:
            ledger.post_transfers(store, pending)
            pending = []
    ledger.post_transfers(store, pending)

    balances = store.balances()
    assert sum(balances.values()) == 0
    for account_id, balance in balances.items():
        assert sum(e.amount for e in store.state.entries if e.account_id == account_id) == balance
        row = store.state.accounts[account_id]
        if not row.allow_overdraft:
            assert balance >= 0
        last = [e.balance_after for e in store.state.entries if e.account_id == account_id][-1:]
        assert last in ([], [balance])
    assert all(t.record.status != "pending" for t in store.state.transfers.values())
    assert len(enqueue.calls) == len(store.state.transfers)


# --- sweeper and pruning --------------------------------------------------------------------


def test_stale_pending_transfers_are_found_oldest_first(store, cache, enqueue, alice):
    ids = [accepted_id(accept(store, cache, enqueue, DEPOSIT, destination=alice)) for _ in range(4)]
    posted, fresh, old, older = ids
    ledger.post_transfers(store, [posted])
    with store() as uow:
        uow.transfers.backdate(posted, 3600)
        uow.transfers.backdate(old, 600)
        uow.transfers.backdate(older, 1200)
        uow.commit()
    assert ledger.stale_pending_transfer_ids(store, age_min_seconds=300, limit=10) == [older, old]
    assert ledger.stale_pending_transfer_ids(store, age_min_seconds=300, limit=1) == [older]
    assert ledger.stale_pending_transfer_ids(store, age_min_seconds=900, limit=10) == [older]
    every_pending = ledger.stale_pending_transfer_ids(store, age_min_seconds=0, limit=10)
    assert set(every_pending) == {fresh, old, older}


def test_prune_removes_only_expired_idempotency_keys(store, cache):
    idempotent(store, cache, Action(), key="old")
    idempotent(store, cache, Action(), key="new")
    old = store.state.idempotency[(TEST_API_KEY_ID, "old")]
    old.created_at -= timedelta(seconds=limits.idempotency_ttl_seconds + 60)
    assert ledger.prune_idempotency_keys(store) == 1
    assert set(store.state.idempotency) == {(TEST_API_KEY_ID, "new")}
    assert ledger.prune_idempotency_keys(store) == 0


# --- reads and paging -----------------------------------------------------------------------


def test_reading_unknown_things_fails(store):
    assert ledger.get_account(store, "acc_nope").code == "account_not_found"
    assert ledger.get_transfer(store, "tr_nope").code == "transfer_not_found"
    assert ledger.list_entries(store, "acc_nope", cursor=None, limit=5).code == "account_not_found"


def collect_pages(fetch, limit: int) -> tuple[list[dict[str, Any]], int]:
    items: list[dict[str, Any]] = []
    cursor, pages = None, 0
    while True:
        page = fetch(cursor=cursor, limit=limit)
        assert isinstance(page, Page), page
        assert len(page.data) <= limit
        pages += 1
        items.extend(page.data)
        if page.next_cursor is None:
            return items, pages
        assert page.data, "a page that promises more must not be empty"
        cursor = page.next_cursor
        assert pages < 100


@pytest.mark.parametrize("limit", [1, 2, 3, 4, 8, 9, 50])
def test_list_accounts_returns_each_account_once(store, cache, limit):
    for currency in ("USD", "EUR", "USD", "JPY", "USD"):
        new_account(store, cache, currency)
    expected = sorted(store.state.accounts)  # 5 accounts and 3 system accounts
    items, pages = collect_pages(lambda **kw: ledger.list_accounts(store, **kw), limit)
    assert [a["id"] for a in items] == expected
    assert pages == max(1, math.ceil(len(expected) / limit))


def test_list_accounts_of_empty_books(store):
    assert ledger.list_accounts(store, cursor=None, limit=10) == Page([], None)


@pytest.mark.parametrize("cursor", ["garbage!", "", encode_cursor("")[:-1] + "?"])
def test_list_accounts_refuses_a_bad_cursor(store, cursor):
    result = ledger.list_accounts(store, cursor=cursor, limit=10)
    assert isinstance(result, Failure)
    assert result.code == "invalid_cursor"


@pytest.mark.parametrize("limit", [1, 2, 3, 6, 7, 200])
def test_list_entries_returns_each_entry_once_in_posting_order(store, cache, enqueue, alice, limit):
    for amount in (10, 20, 30):
        fund(store, cache, enqueue, alice, amount)
    for amount in (5, 15, 100):
        transfer_id = accepted_id(
            accept(store, cache, enqueue, WITHDRAWAL, source=alice, amount=amount)
        )
        ledger.post_transfers(store, [transfer_id])
    items, pages = collect_pages(lambda **kw: ledger.list_entries(store, alice, **kw), limit)
    assert [(e["amount"], e["balance_after"]) for e in items] == [
        (10, 10),
        (20, 30),
        (30, 60),
        (-5, 55),
        (-15, 40),
    ]  # the withdrawal of 100 was rejected and wrote no entry
    assert len({e["id"] for e in items}) == 5
    assert all(e["account_id"] == alice and e["id"].startswith("ent_") for e in items)
    assert pages == max(1, math.ceil(5 / limit))


@pytest.mark.parametrize("cursor", ["garbage!", encode_cursor("acc_123"), encode_cursor("1.5")])
def test_list_entries_refuses_a_bad_cursor(store, cache, alice, cursor):
    result = ledger.list_entries(store, alice, cursor=cursor, limit=10)
    assert isinstance(result, Failure)
    assert result.code == "invalid_cursor"


# --- access ---------------------------------------------------------------------------------


def test_api_key_round_trip(store):
    key_id, secret = create_api_key(store, name="ci", scope=Scope.WRITE)
    assert key_id.startswith("key_")
    assert secret.startswith(SECRET_PREFIX)
    assert len(secret) > 40
    assert authenticate(store, secret) == (key_id, "write")
    # Only the hash is stored.
    row = store.state.api_keys[key_id]
    assert row.key_hash == hashlib.sha256(secret.encode()).digest() == hash_secret(secret)
    assert secret not in repr(store.state)


def test_wrong_or_revoked_secret_does_not_authenticate(store):
    key_id, secret = create_api_key(store, name="ci", scope=Scope.READ)
    assert authenticate(store, secret + "x") is None
    assert authenticate(store, "") is None
    assert authenticate(store, secret[:-1]) is None
    with store() as uow:
        uow.api_keys.revoke(key_id)
        uow.commit()
    assert authenticate(store, secret) is None


def test_each_key_gets_its_own_secret(store):
    (id1, s1), (id2, s2) = (create_api_key(store, name=n, scope=Scope.ADMIN) for n in "ab")
    assert id1 != id2
    assert s1 != s2
    assert authenticate(store, s2) == (id2, "admin")


@pytest.mark.parametrize("granted", list(Scope))
@pytest.mark.parametrize("required", list(Scope))
def test_scopes_are_ordered_read_write_admin(granted, required):
    order = [Scope.READ, Scope.WRITE, Scope.ADMIN]
    assert scope_allows(granted.value, required) is (order.index(granted) >= order.index(required))


def test_unknown_scope_raises():
    with pytest.raises(ValueError):
        scope_allows("root", Scope.READ)


def test_add_custom_currency(store):
    assert add_custom_currency(store, code="GOLD", exponent=0) is None
    assert add_custom_currency(store, code="POINTS", exponent=2) is None
    with store() as uow:
        assert uow.currencies.list_custom() == [("GOLD", 0), ("POINTS", 2)]
    again = add_custom_currency(store, code="GOLD", exponent=3)
    assert isinstance(again, Failure)
    assert again.code == "currency_exists"
    assert store.state.custom_currencies == {"GOLD": 0, "POINTS": 2}


@pytest.mark.parametrize(
    ("code", "exponent", "problem"),
    [("USD", 2, "code_is_iso_4217"), ("gold", 0, "invalid_code"), ("GOLD", 19, "invalid_exponent")],
)
def test_invalid_custom_currency_is_refused_without_touching_the_database(
    store, code, exponent, problem
):
    result = add_custom_currency(store, code=code, exponent=exponent)
    assert isinstance(result, Failure)
    assert result.code == problem
    assert store.opened == 0
