"""The built-in pii classifier: words of a column's name, its type, then its description."""

from __future__ import annotations

import pytest

from lily.domain.classification import BUILT_IN, blocked, blocking_patterns, closure
from lily.pipeline.pii import PiiClassifier, words


@pytest.mark.parametrize(
    ("column", "expected"),
    [
        ({"name": "email"}, "PII.Email"),
        ({"name": "customerEmailAddress"}, "PII.Email"),
        ({"name": "E_MAIL"}, "PII.Email"),
        ({"name": "mobile_phone"}, "PII.Phone"),
        ({"name": "ssn"}, "PII.NationalId"),
        ({"name": "passport_no"}, "PII.NationalId"),
        ({"name": "credit_card_number"}, "PII.CreditCard"),
        ({"name": "iban"}, "PII.IBAN"),
        ({"name": "client_ip"}, "PII.IPAddress"),
        ({"name": "src", "type": "inet"}, "PII.IPAddress"),
        ({"name": "DateOfBirth"}, "PII.DateOfBirth"),
        ({"name": "last_name"}, "PII.Name"),
        ({"name": "street_address"}, "PII.Address"),
        ({"name": "zip"}, "PII.Address"),
        ({"name": "c7", "description": "The customer's home address"}, "PII.Address"),
        ({"name": "emailed_count"}, None),
        ({"name": "zipper_size"}, None),
        ({"name": "name"}, None),  # a product's name as often as a person's
        ({"name": "ship_date"}, None),
    ],
)
def test_columns(column: dict[str, str], expected: str | None) -> None:
    found = PiiClassifier().classify({"attributes": {"columns": [column]}})
    assert [p.classification for p in found] == ([expected] if expected else [])
    if expected:
        assert found[0].column == column["name"] and 0 < found[0].confidence <= 1
        assert found[0].classification in BUILT_IN


def test_no_columns_no_proposals() -> None:
    assert PiiClassifier().classify({"attributes": {"columns": "email"}}) == []
    assert PiiClassifier().classify({"attributes": {}}) == []
    assert words("customerEmail-Address") == "customer_email_address"


def test_names_parents_and_blocking() -> None:
    assert closure(["PII.Email", "GDPR", "PII.Contact.Phone"]) == [
        "GDPR", "PII", "PII.Contact", "PII.Contact.Phone", "PII.Email"
    ]  # fmt: skip
    assert blocked("PII.Email", ["PII.*"]) and blocked("PII", ["PII.*"]) and blocked("PII.Email", ["*"])
    assert not blocked("PIIX.Email", ["PII.*"]) and not blocked("PII.Phone", ["PII.Email"])
    assert blocking_patterns({"lily": {"blocks_propagation": ["PII.*"]}, "lily.blocks_propagation": "GDPR"}) == [
        "GDPR",
        "PII.*",
    ]
