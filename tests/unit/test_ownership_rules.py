"""Whose money a key may move: admin keys may debit any account, write keys the accounts of
their owner only (never one without an owner), read keys none; a movement is refused for
the first client account it debits that the key may not, system accounts aside."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from ledger_core.domain import limits
from ledger_core.domain.access import ApiKey, Scope, first_not_owned, may_debit, owner_is_valid
from ledger_core.domain.model import AccountFacts

owners = st.text(min_size=1, max_size=8)


def expected(scope: Scope, key_owner: str, account_owner: str | None) -> bool:
    """The table of the rule, written out case by case."""
    if scope is Scope.ADMIN:
        return True
    if scope is Scope.WRITE:
        return account_owner is not None and account_owner == key_owner
    return False


@given(scope=st.sampled_from(Scope), key_owner=owners, account_owner=st.none() | owners)
def test_may_debit_matches_the_table_for_any_scope_and_owners(scope, key_owner, account_owner):
    assert may_debit(scope, key_owner, account_owner) is expected(scope, key_owner, account_owner)


@given(scope=st.sampled_from(Scope), owner=owners)
def test_a_key_of_the_same_owner_may_debit_unless_it_only_reads(scope, owner):
    assert may_debit(scope, owner, owner) is (scope is not Scope.READ)


@given(owner=owners)
def test_an_account_without_an_owner_is_debited_by_admin_keys_only(owner):
    assert [may_debit(scope, owner, None) for scope in Scope] == [False, False, True]


def account(account_id: str, owner: str | None, *, system: bool = False) -> AccountFacts:
    return AccountFacts(account_id, "USD", allow_overdraft=system, is_system=system, owner=owner)


@given(
    scope=st.sampled_from(Scope),
    key_owner=owners,
    debited=st.lists(st.tuples(st.none() | owners, st.booleans()), max_size=6),
)
def test_first_not_owned_names_the_first_client_account_the_rule_refuses(scope, key_owner, debited):
    accounts = [account(f"acc_{n}", o, system=s) for n, (o, s) in enumerate(debited)]
    refused = [
        a.id for a in accounts if not a.is_system and not expected(scope, key_owner, a.owner)
    ]
    key = ApiKey("key_x", scope, key_owner)
    assert first_not_owned(key, accounts) == (refused[0] if refused else None)


def test_a_system_account_is_never_refused_a_deposit_debits_it():
    system = account("acc_sys", None, system=True)
    assert first_not_owned(ApiKey("key_w", Scope.WRITE, "ann"), [system]) is None


def test_owners_are_printable_and_bounded():
    assert owner_is_valid("team-billing")
    assert owner_is_valid("x" * limits.api_key_owner_length_max)
    assert not owner_is_valid("")
    assert not owner_is_valid("x" * (limits.api_key_owner_length_max + 1))
    assert not owner_is_valid("a\nb")
