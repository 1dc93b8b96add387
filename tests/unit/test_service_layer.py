"""The account, access and read use cases, run against the in-memory unit of work, store
only what they should, act once per idempotency key (a concurrent duplicate is told the key
is in use), let a revoked API key in for at most the cache's TTL and an expired one not at
all, give keys owners, revoke and list them, page through everything exactly once, and
reconcile books that balance as clean and broken ones as broken."""

from __future__ import annotations

import hashlib
import math
from datetime import timedelta
from typing import Any

import pytest
from fakes import TEST_API_KEY_ID, FakeIdempotencyCache, FakeStore, counted
from scenario import (
    WITHDRAWAL,
    accept,
    accepted_id,
    deposit,
    fresh_key,
    fund,
    movement,
    new_account,
    open_account,
)

from ledger_core.adapters.books_checks import CHECKS
from ledger_core.domain import limits
from ledger_core.domain.access import ApiKey, Scope, scope_allows
from ledger_core.service_layer import access, accounts, posting
from ledger_core.service_layer.access import (
    SECRET_PREFIX,
    ApiKeyCache,
    add_custom_currency,
    authenticate,
    create_api_key,
    hash_secret,
    list_api_keys,
    revoke_api_key,
)
from ledger_core.service_layer.errors import Failure, Response
from ledger_core.service_layer.idempotency import request_fingerprint, run_idempotent
from ledger_core.service_layer.pagination import Page, encode_cursor
from ledger_core.service_layer.reconcile import reconcile, report


def account_json(store: FakeStore, account_id: str) -> dict[str, Any]:
    body = accounts.get_account(store, account_id)
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


def test_system_account_is_created_once_per_currency(store):
    for currency in ("USD", "USD", "EUR", "USD", "EUR", "JPY"):
        new_account(store, currency)
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


def test_custom_currency_can_be_used_once_added(store):
    assert open_account(store, currency="GOLD").code == "unknown_currency"
    assert add_custom_currency(store, code="GOLD", exponent=0) is None
    account_id = new_account(store, "GOLD")
    assert account_json(store, account_id)["currency"] == "GOLD"
    assert store.system_account_id("GOLD")


def test_open_account_without_a_key_acts_every_time(store, cache):
    first, second = (open_account(store, cache) for _ in range(2))
    assert first.body["id"] != second.body["id"]
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


def test_open_account_with_a_key_from_the_database_when_the_cache_forgot(store, cache):
    key = fresh_key()
    first = open_account(store, cache, key=key)
    cache.forget()
    second = open_account(store, cache, key=key)
    assert second == Response(201, first.body, replayed=True)
    assert len([a for a in store.state.accounts.values() if not a.is_system]) == 1


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


def test_a_live_stored_response_is_never_overwritten(store, cache):
    """PUT_RESPONSE replaces a row only once it expired, whatever a caller does."""
    idempotent(store, cache, Action())
    with store() as uow:
        uow.idempotency.put(
            TEST_API_KEY_ID, "k1", request_hash="h2", status_code=500, response_body={"x": 1}
        )
        uow.commit()
    row = store.state.idempotency[(TEST_API_KEY_ID, "k1")]
    assert (row.request_hash, row.status_code, row.response_body) == ("h1", 201, {"run": 1})


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


def test_prune_removes_only_expired_idempotency_keys(store, cache):
    idempotent(store, cache, Action(), key="old")
    idempotent(store, cache, Action(), key="new")
    old = store.state.idempotency[(TEST_API_KEY_ID, "old")]
    old.created_at -= timedelta(seconds=limits.idempotency_ttl_seconds + 60)
    assert accounts.prune_idempotency_keys(store) == 1
    assert set(store.state.idempotency) == {(TEST_API_KEY_ID, "new")}
    assert accounts.prune_idempotency_keys(store) == 0


# --- reads and paging -----------------------------------------------------------------------


def test_reading_unknown_things_fails(store):
    assert accounts.get_account(store, "acc_nope").code == "account_not_found"
    result = accounts.list_entries(store, "acc_nope", cursor=None, limit=5)
    assert result.code == "account_not_found"


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
def test_list_accounts_returns_each_account_once(store, limit):
    for currency in ("USD", "EUR", "USD", "JPY", "USD"):
        new_account(store, currency)
    expected = sorted(store.state.accounts)  # 5 accounts and 3 system accounts
    items, pages = collect_pages(lambda **kw: accounts.list_accounts(store, **kw), limit)
    assert [a["id"] for a in items] == expected
    assert pages == max(1, math.ceil(len(expected) / limit))


def test_list_accounts_of_empty_books(store):
    assert accounts.list_accounts(store, cursor=None, limit=10) == Page([], None)


@pytest.mark.parametrize("cursor", ["garbage!", "", encode_cursor("")[:-1] + "?"])
def test_list_accounts_refuses_a_bad_cursor(store, cursor):
    result = accounts.list_accounts(store, cursor=cursor, limit=10)
    assert isinstance(result, Failure)
    assert result.code == "invalid_cursor"


@pytest.mark.parametrize("limit", [1, 2, 3, 6, 7, 200])
def test_list_entries_returns_each_entry_once_in_posting_order(store, limit):
    alice = new_account(store)
    for amount in (10, 20, 30):
        fund(store, alice, amount)
    for amount in (5, 15, 100):
        transfer_id = accepted_id(accept(store, movement(WITHDRAWAL, alice, None, amount)))
        posting.post_transfers(store, [transfer_id])
    items, pages = collect_pages(lambda **kw: accounts.list_entries(store, alice, **kw), limit)
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
def test_list_entries_refuses_a_bad_cursor(store, cursor):
    alice = new_account(store)
    result = accounts.list_entries(store, alice, cursor=cursor, limit=10)
    assert isinstance(result, Failure)
    assert result.code == "invalid_cursor"


# --- access ---------------------------------------------------------------------------------


def test_api_key_round_trip(store):
    key_id, secret = create_api_key(store, name="ci", scope=Scope.WRITE)
    assert key_id.startswith("key_")
    assert secret.startswith(SECRET_PREFIX)
    assert len(secret) > 40
    assert authenticate(store, secret) == ApiKey(key_id, Scope.WRITE, key_id)
    # Only the hash is stored.
    row = store.state.api_keys[key_id]
    assert row.key_hash == hashlib.sha256(secret.encode()).digest() == hash_secret(secret)
    assert secret not in repr(store.state)


def test_wrong_or_revoked_secret_does_not_authenticate(store):
    key_id, secret = create_api_key(store, name="ci", scope=Scope.READ)
    assert authenticate(store, secret + "x") is None
    assert authenticate(store, "") is None
    assert authenticate(store, secret[:-1]) is None
    store.revoke_api_key(key_id)
    assert authenticate(store, secret) is None


def test_each_key_gets_its_own_secret(store):
    (id1, s1), (id2, s2) = (create_api_key(store, name=n, scope=Scope.ADMIN) for n in "ab")
    assert id1 != id2
    assert s1 != s2
    assert authenticate(store, s2) == ApiKey(id2, Scope.ADMIN, id2)


def test_a_key_is_its_own_owner_unless_given_one_and_keys_may_share_one(store):
    own_id, own = create_api_key(store, name="a", scope=Scope.WRITE)
    _, first = create_api_key(store, name="b", scope=Scope.WRITE, owner="billing")
    _, rotated = create_api_key(store, name="c", scope=Scope.WRITE, owner="billing")
    assert [authenticate(store, s).owner for s in (own, first, rotated)] == [
        own_id,
        "billing",
        "billing",
    ]


@pytest.mark.parametrize("owner", ["", "x" * (limits.api_key_owner_length_max + 1), "a\tb"])
def test_a_key_with_a_malformed_owner_is_not_created(store, owner):
    with pytest.raises(ValueError):
        create_api_key(store, name="bad", scope=Scope.WRITE, owner=owner)
    assert len(store.state.api_keys) == 1  # the store's own test key


def test_an_expired_key_does_not_authenticate(store):
    expires_at = store.now() + timedelta(seconds=60)
    key_id, secret = create_api_key(store, name="ci", scope=Scope.WRITE, expires_at=expires_at)
    assert authenticate(store, secret) == ApiKey(key_id, Scope.WRITE, key_id, expires_at)
    store.advance(59.999)
    assert authenticate(store, secret) is not None
    store.advance(0.001)
    assert authenticate(store, secret) is None, "a key was let in at its expiry"


def test_revoking_a_key_refuses_it_and_a_second_revocation_or_an_unknown_key_fails(store):
    key_id, secret = create_api_key(store, name="ci", scope=Scope.WRITE)
    assert revoke_api_key(store, key_id) is None
    assert authenticate(store, secret) is None
    assert store.state.api_keys[key_id].revoked_at == store.now()
    again = revoke_api_key(store, key_id)
    assert isinstance(again, Failure) and again.code == "api_key_revoked"
    unknown = revoke_api_key(store, "key_nope")
    assert isinstance(unknown, Failure) and unknown.code == "api_key_not_found"


def test_listing_keys_pages_through_every_key_oldest_first_without_secrets(store, monkeypatch):
    monkeypatch.setattr(access, "api_key_page_size", 2)
    # With the store's own key, five: pages of 2, 2 and 1.
    made = [create_api_key(store, name=f"k{n}", scope=Scope.READ) for n in range(4)]
    listed = list(list_api_keys(store))
    assert [k.id for k in listed] == sorted([TEST_API_KEY_ID, *(i for i, _ in made)])
    assert all(secret not in repr(listed) for _, secret in made)
    assert counted(store, "api_keys.list_page") == 3


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


# --- ApiKeyCache ----------------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_revoked_key_works_until_the_ttl_has_passed_and_not_after(store):
    key_id, secret = create_api_key(store, name="ci", scope=Scope.WRITE)
    clock = Clock()
    keys = ApiKeyCache(store, ttl_seconds=5.0, monotonic=clock)
    key = ApiKey(key_id, Scope.WRITE, key_id)
    assert keys.authenticate(secret) == key
    store.revoke_api_key(key_id)
    clock.now += 4.999
    assert keys.authenticate(secret) == key, "revocation took effect early"
    clock.now += 0.001
    assert keys.authenticate(secret) is None, "a revoked key outlived the TTL"
    clock.now += 100
    assert keys.authenticate(secret) is None


def test_a_key_is_not_remembered_past_its_expiry(store):
    clock = Clock()
    started, started_monotonic = store.now(), clock.now
    expires_at = started + timedelta(seconds=2)
    _, secret = create_api_key(store, name="ci", scope=Scope.WRITE, expires_at=expires_at)
    keys = ApiKeyCache(
        store,
        ttl_seconds=5.0,
        monotonic=clock,
        clock=lambda: started + timedelta(seconds=clock.now - started_monotonic),
    )
    assert keys.authenticate(secret) is not None
    clock.now += 1.999
    assert keys.authenticate(secret) is not None
    assert counted(store, "api_keys.find_active") == 1
    clock.now += 0.001
    store.advance(2)
    assert keys.authenticate(secret) is None, "an expired key outlived its expiry in the cache"
    assert counted(store, "api_keys.find_active") == 2


def test_within_the_ttl_a_key_costs_one_database_read(store):
    key_id, secret = create_api_key(store, name="ci", scope=Scope.READ)
    clock = Clock()
    keys = ApiKeyCache(store, ttl_seconds=5.0, monotonic=clock)
    for _ in range(10):
        assert keys.authenticate(secret) == ApiKey(key_id, Scope.READ, key_id)
        clock.now += 0.4
    assert counted(store, "api_keys.find_active") == 1
    clock.now += 1.5  # 5.5 s after the first check
    keys.authenticate(secret)
    assert counted(store, "api_keys.find_active") == 2


def test_an_unknown_secret_is_remembered_too_and_a_new_key_works_after_the_ttl(store):
    clock = Clock()
    keys = ApiKeyCache(store, ttl_seconds=5.0, monotonic=clock)
    for _ in range(5):
        assert keys.authenticate("lk_nope") is None
    assert counted(store, "api_keys.find_active") == 1
    # Another secret is another entry: one check each.
    assert keys.authenticate("lk_other") is None
    assert counted(store, "api_keys.find_active") == 2


def test_the_cache_is_bounded_and_starts_over_when_full(store):
    clock = Clock()
    keys = ApiKeyCache(store, ttl_seconds=60.0, size_max=3, monotonic=clock)
    for n in range(3):
        keys.authenticate(f"lk_{n}")
    assert counted(store, "api_keys.find_active") == 3
    keys.authenticate("lk_0")
    assert counted(store, "api_keys.find_active") == 3  # still remembered
    keys.authenticate("lk_3")  # full: emptied, then this one remembered
    keys.authenticate("lk_0")
    assert counted(store, "api_keys.find_active") == 5


# --- reconcile ------------------------------------------------------------------------------


def violated(store: FakeStore, **kwargs: float) -> dict[str, list[tuple[str, int]]]:
    return {rule: rows for rule, rows in reconcile(store, **kwargs).items() if rows}


def test_books_built_by_the_use_cases_reconcile_clean(store):
    alice, bob = new_account(store), new_account(store)
    fund(store, alice, 100)
    posting.post_transfers(store, [deposit(store, bob, 5)])
    assert violated(store) == {}
    # The fake checks every rule the SQL does, under the same names, in the same order.
    assert list(reconcile(store)) == list(CHECKS)


def test_a_balance_that_entries_do_not_explain_is_reported(store):
    alice = new_account(store)
    fund(store, alice, 100)
    store.set_balance(alice, 90)
    assert violated(store) == {
        "balance_differs_from_entries": [(alice, -10)],
        "balance_differs_from_last_balance_after": [(alice, -10)],
    }


def test_a_transfer_pending_too_long_is_reported_with_its_age(store):
    alice = new_account(store)
    transfer_id = deposit(store, alice)
    assert violated(store, pending_age_max_seconds=300) == {}
    store.advance(301)
    assert violated(store, pending_age_max_seconds=300) == {
        "transfer_pending_too_long": [(transfer_id, 301)]
    }
    report_text = report(reconcile(store, pending_age_max_seconds=300))
    assert f"FAIL transfer_pending_too_long: 1 — {transfer_id} (301)" in report_text
    assert "ok   balance_differs_from_entries" in report_text
