"""The currency table, custom unit validation, time-ordered ids, opaque cursors and the JSON
shapes of records are what the API promises its clients."""

from __future__ import annotations

import re
import time
from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ledger_core.domain.currency import (
    ISO_4217_EXPONENTS,
    Currency,
    custom_exponent_max,
    iso_currency,
    validate_custom_currency,
)
from ledger_core.domain.ids import (
    ACCOUNT_PREFIX,
    API_KEY_PREFIX,
    BATCH_PREFIX,
    TRANSFER_PREFIX,
    new_id,
)
from ledger_core.domain.records import (
    AccountRecord,
    BatchRecord,
    EntryRecord,
    TransferRecord,
    iso_utc,
)
from ledger_core.service_layer.pagination import (
    InvalidCursorError,
    Page,
    decode_cursor,
    encode_cursor,
)

FAST = settings(max_examples=100, deadline=None, database=None)

# --- ISO 4217 table -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "exponent"),
    [
        ("USD", 2),
        ("EUR", 2),
        ("GBP", 2),
        ("JPY", 0),
        ("KRW", 0),
        ("CLP", 0),
        ("ISK", 0),
        ("KWD", 3),
        ("BHD", 3),
        ("TND", 3),
        ("UYW", 4),
    ],
)
def test_known_exponents(code, exponent):
    assert ISO_4217_EXPONENTS[code] == exponent
    assert iso_currency(code) == Currency(code, exponent, custom=False)


def test_every_code_is_three_uppercase_letters_with_exponent_0_to_4():
    for code, exponent in ISO_4217_EXPONENTS.items():
        assert re.fullmatch(r"[A-Z]{3}", code), code
        assert type(exponent) is int
        assert 0 <= exponent <= 4, code


def test_table_is_large_and_leaves_out_metals_funds_and_test_codes():
    assert len(ISO_4217_EXPONENTS) > 150
    for code in ("XAU", "XAG", "XPT", "XPD", "XDR", "XTS", "XXX", "HRK"):
        assert code not in ISO_4217_EXPONENTS


@pytest.mark.parametrize("code", ["usd", "Usd", "US", "USDX", "", " USD", "GOLD"])
def test_iso_currency_is_exact_and_case_sensitive(code):
    assert iso_currency(code) is None


# --- Custom units ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "exponent", "problem"),
    [
        ("GOLD", 0, None),
        ("GO", 0, None),
        ("G0LD_2", 18, None),
        ("POINTS", 6, None),
        ("A" + "B" * 15, 0, None),  # 16 characters, the longest allowed
        ("USD", 2, "code_is_iso_4217"),
        ("JPY", 0, "code_is_iso_4217"),
        ("USD", 99, "code_is_iso_4217"),
        ("G", 0, "invalid_code"),
        ("", 0, "invalid_code"),
        ("gold", 0, "invalid_code"),
        ("Gold", 0, "invalid_code"),
        ("1GOLD", 0, "invalid_code"),
        ("_GOLD", 0, "invalid_code"),
        ("GO-LD", 0, "invalid_code"),
        ("GO LD", 0, "invalid_code"),
        (" GOLD", 0, "invalid_code"),
        ("GOLD ", 0, "invalid_code"),
        ("A" + "B" * 16, 0, "invalid_code"),  # 17 characters
        ("GÖLD", 0, "invalid_code"),
        ("GOLD", -1, "invalid_exponent"),
        ("GOLD", custom_exponent_max + 1, "invalid_exponent"),
        ("GOLD", custom_exponent_max, None),
    ],
)
def test_validate_custom_currency(code, exponent, problem):
    assert validate_custom_currency(code, exponent) == problem


@pytest.mark.parametrize("code", ["GOLD\n", "USD\n"])
def test_custom_code_with_trailing_newline_is_refused(code):
    assert validate_custom_currency(code, 0) == "invalid_code"


code_characters = st.characters(codec="utf-8")


@FAST
@given(st.text(code_characters, max_size=20), st.integers(-5, 25))
def test_accepted_custom_codes_are_well_formed_and_never_iso(code, exponent):
    if validate_custom_currency(code, exponent) is None:
        assert re.fullmatch(r"[A-Z][A-Z0-9_]{1,15}", code)
        assert code not in ISO_4217_EXPONENTS
        assert 0 <= exponent <= custom_exponent_max


@FAST
@given(st.from_regex(r"[A-Z][A-Z0-9_]{1,15}", fullmatch=True), st.integers(0, 18))
def test_well_formed_non_iso_codes_are_accepted(code, exponent):
    expected = "code_is_iso_4217" if code in ISO_4217_EXPONENTS else None
    assert validate_custom_currency(code, exponent) == expected


# --- Ids ------------------------------------------------------------------------------------


@pytest.mark.parametrize("prefix", [ACCOUNT_PREFIX, TRANSFER_PREFIX, API_KEY_PREFIX, BATCH_PREFIX])
def test_id_is_prefix_then_12_hex_milliseconds_then_16_hex_random(prefix):
    identifier = new_id(prefix, now_ms=0xABC)
    assert re.fullmatch(rf"{prefix}_000000000abc[0-9a-f]{{16}}", identifier)


def test_prefixes():
    assert (ACCOUNT_PREFIX, TRANSFER_PREFIX, API_KEY_PREFIX, BATCH_PREFIX) == (
        "acc",
        "tr",
        "key",
        "bat",
    )


def test_id_without_a_clock_uses_the_current_time():
    before = time.time_ns() // 1_000_000
    identifier = new_id("acc")
    after = time.time_ns() // 1_000_000
    assert before <= int(identifier[4:16], 16) <= after


def test_ids_of_the_same_millisecond_differ():
    assert len({new_id("tr", now_ms=1) for _ in range(100)}) == 100


@FAST
@given(st.lists(st.integers(0, 16**12 - 1), min_size=2, max_size=20, unique=True))
def test_ids_sort_by_creation_time(moments):
    moments.sort()
    ids = [new_id("acc", now_ms=ms) for ms in moments]
    assert sorted(ids) == ids
    assert len(set(ids)) == len(ids)


# --- Cursors --------------------------------------------------------------------------------

keys = st.text(st.characters(codec="utf-8"), min_size=1, max_size=50)


@FAST
@given(keys)
def test_text_cursor_round_trips(key):
    assert decode_cursor(encode_cursor(key)) == key


@FAST
@given(st.integers(-(2**63), 2**63))
def test_int_cursor_round_trips(key):
    assert int(decode_cursor(encode_cursor(key))) == key


@FAST
@given(st.one_of(keys, st.integers()))
def test_cursor_is_url_safe_without_padding(key):
    assert re.fullmatch(r"[A-Za-z0-9_-]+", encode_cursor(key))


def test_cursor_is_opaque():
    cursor = encode_cursor("acc_0123")
    assert "acc" not in cursor
    assert decode_cursor(cursor) == "acc_0123"


@pytest.mark.parametrize(
    "cursor",
    [
        "",
        "!!!!",
        "a",  # one base64 character cannot encode a byte
        "djE6",  # "v1:" with an empty key
        "djI6YWJj",  # "v2:abc"
        "YWJj",  # "abc", no version
        "v1:acc_1",  # not encoded at all
        "é",
        "__8",  # bytes that are not UTF-8
    ],
)
def test_garbage_cursor_raises_invalid_cursor(cursor):
    with pytest.raises(InvalidCursorError):
        decode_cursor(cursor)


def test_invalid_cursor_error_is_a_value_error():
    assert issubclass(InvalidCursorError, ValueError)


@FAST
@given(st.text(max_size=30))
def test_decode_either_succeeds_or_raises_invalid_cursor(cursor):
    try:
        key = decode_cursor(cursor)
    except InvalidCursorError:
        return
    assert isinstance(key, str)
    assert key


def test_page_json():
    page = Page([{"id": "a"}], "abc")
    assert page.to_json() == {"object": "list", "data": [{"id": "a"}], "next_cursor": "abc"}
    assert Page([], None).to_json()["next_cursor"] is None


# --- Records --------------------------------------------------------------------------------

MOMENT = datetime(2024, 5, 1, 12, 30, 45, 123456, tzinfo=UTC)
ISO_PATTERN = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z"


def test_iso_utc():
    assert iso_utc(None) is None
    assert iso_utc(MOMENT) == "2024-05-01T12:30:45.123456Z"
    paris = timezone(timedelta(hours=2))
    assert iso_utc(datetime(2024, 5, 1, 14, 30, 45, 123456, tzinfo=paris)) == (
        "2024-05-01T12:30:45.123456Z"
    )
    assert iso_utc(datetime(2024, 1, 1, tzinfo=UTC)) == "2024-01-01T00:00:00.000000Z"


@FAST
@given(
    st.datetimes(
        # Hypothesis wants naive bounds; the zones below are drawn separately.
        min_value=datetime(1970, 1, 2),  # noqa: DTZ001
        max_value=datetime(2999, 12, 30),  # noqa: DTZ001
        timezones=st.sampled_from([UTC, timezone(timedelta(hours=-7)), timezone.min]),
    )
)
def test_iso_utc_always_ends_with_z(moment):
    text = iso_utc(moment)
    assert text is not None
    assert text.endswith("Z")
    assert "+" not in text
    assert datetime.fromisoformat(text) == moment


def account_record(posted: int = 0, pending_in: int = 0, pending_out: int = 0) -> AccountRecord:
    return AccountRecord(
        id="acc_1",
        currency="USD",
        name="Alice",
        metadata={"k": "v"},
        allow_overdraft=False,
        is_system=False,
        posted=posted,
        pending_in=pending_in,
        pending_out=pending_out,
        created_at=MOMENT,
    )


def test_account_json_shape():
    assert account_record(posted=1000, pending_in=300, pending_out=200).to_json() == {
        "id": "acc_1",
        "object": "account",
        "currency": "USD",
        "name": "Alice",
        "metadata": {"k": "v"},
        "allow_overdraft": False,
        "is_system": False,
        "balance": {"posted": 1000, "pending": 100, "available": 800},
        "created_at": "2024-05-01T12:30:45.123456Z",
    }


@FAST
@given(st.integers(-(2**63), 2**63 - 1), st.integers(0, 2**70), st.integers(0, 2**70))
def test_account_balance_arithmetic(posted, pending_in, pending_out):
    balance = account_record(posted, pending_in, pending_out).to_json()["balance"]
    assert balance["posted"] == posted
    assert balance["pending"] == pending_in - pending_out
    # Incoming money counts once posted, outgoing money at once.
    assert balance["available"] == posted - pending_out


def test_transfer_json_shape():
    record = TransferRecord(
        id="tr_1",
        kind="deposit",
        status="pending",
        rejection_reason=None,
        source_account_id="acc_sys",
        destination_account_id="acc_1",
        amount=500,
        currency="USD",
        description="salary",
        metadata={},
        created_at=MOMENT,
        posted_at=None,
    )
    body = record.to_json()
    assert body == {
        "id": "tr_1",
        "object": "transfer",
        "kind": "deposit",
        "status": "pending",
        "rejection_reason": None,
        "source_account_id": "acc_sys",
        "destination_account_id": "acc_1",
        "amount": 500,
        "currency": "USD",
        "description": "salary",
        "metadata": {},
        "batch_id": None,
        "created_at": "2024-05-01T12:30:45.123456Z",
        "posted_at": None,
    }
    posted = TransferRecord(**{**_fields(record), "status": "posted", "posted_at": MOMENT})
    assert re.fullmatch(ISO_PATTERN, posted.to_json()["posted_at"])


def _fields(record: TransferRecord) -> dict:
    return {name: getattr(record, name) for name in record.__slots__}


def test_entry_json_shape():
    record = EntryRecord(
        id=42,
        transfer_id="tr_1",
        account_id="acc_1",
        amount=-500,
        balance_after=1500,
        created_at=MOMENT,
    )
    assert record.to_json() == {
        "id": "ent_42",
        "object": "entry",
        "transfer_id": "tr_1",
        "account_id": "acc_1",
        "amount": -500,
        "balance_after": 1500,
        "created_at": "2024-05-01T12:30:45.123456Z",
    }


def test_as_accepted_shows_a_transfer_as_its_accept_response_did():
    record = TransferRecord(
        id="tr_1",
        kind="withdrawal",
        status="rejected",
        rejection_reason="insufficient_funds",
        source_account_id="acc_1",
        destination_account_id="acc_sys",
        amount=5,
        currency="USD",
        description=None,
        metadata={},
        created_at=MOMENT,
        posted_at=None,
        batch_id="bat_1",
    )
    accepted = record.as_accepted()
    assert (accepted.status, accepted.rejection_reason, accepted.posted_at) == (
        "pending",
        None,
        None,
    )
    assert (accepted.id, accepted.created_at, accepted.batch_id) == ("tr_1", MOMENT, "bat_1")


def batch_item(n: int, status: str) -> TransferRecord:
    return TransferRecord(
        id=f"tr_{n}",
        kind="deposit",
        status=status,
        rejection_reason="insufficient_funds" if status == "rejected" else None,
        source_account_id="acc_sys",
        destination_account_id="acc_1",
        amount=n,
        currency="USD",
        description=None,
        metadata={},
        created_at=MOMENT,
        posted_at=MOMENT if status == "posted" else None,
        batch_id="bat_1",
    )


@pytest.mark.parametrize(
    ("statuses", "status"),
    [
        (["pending", "posted"], "pending"),
        (["posted", "rejected"], "completed"),
        # Quarantined items wait for an operator, not for posting: the batch is done.
        (["posted", "quarantined"], "completed"),
    ],
)
def test_batch_json_counts_its_items_and_is_complete_once_none_is_pending(statuses, status):
    items = [batch_item(n, s) for n, s in enumerate(statuses, start=1)]
    body = BatchRecord("bat_1", True, MOMENT, items).to_json()
    assert body["object"] == "transfer_batch"
    assert (body["id"], body["atomic"], body["status"]) == ("bat_1", True, status)
    expected = {"pending": 0, "posted": 0, "rejected": 0, "quarantined": 0}
    for s in statuses:
        expected[s] += 1
    assert body["counts"] == expected
    assert body["items"] == [item.to_json() for item in items]
    assert body["created_at"] == "2024-05-01T12:30:45.123456Z"
    replayed = BatchRecord("bat_1", True, MOMENT, items).as_accepted().to_json()
    assert replayed["status"] == "pending"
    assert replayed["counts"]["pending"] == len(statuses)
