"""Lily's built-in classifier (``lily.classifiers``: ``pii``): common personal data recognised from a
column's name, type and description, with a confidence.

Names are split into words first (``customerEmail``, ``CUSTOMER_EMAIL`` and ``customer-email`` all give
``customer email``), and each rule matches whole words, so ``email`` matches and ``emailed_count`` does
not. The first rule that matches a name wins (``email_address`` is an e-mail, not a postal address). A
description that names the data proposes it with a lower confidence. Pure and quick: it runs in the
pipeline on every asset change that carries columns.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from lily.plugins.protocols import Proposal

# (classification, confidence, name words as a regex over "_"-joined words).
_NAME_RULES: tuple[tuple[str, float, str], ...] = (
    ("PII.Email", 0.9, r"e_?mail(_?address|_?addr)?"),
    ("PII.CreditCard", 0.9, r"(credit_?card|card_?(number|num|no)|cc_?(number|num|no)|pan)"),
    ("PII.IBAN", 0.95, r"iban"),
    ("PII.IBAN", 0.6, r"bank_?account(_?(number|num|no))?"),
    (
        "PII.NationalId",
        0.9,
        r"(ssn|social_?security(_?(number|num|no))?|national_?id(_?number)?|nino|nin|passport(_?(number|num|no))?|tax_?id)",
    ),
    ("PII.DateOfBirth", 0.9, r"(dob|date_?of_?birth|birth_?date|birthdate|birthday)"),
    ("PII.Phone", 0.85, r"(phone(_?(number|num|no))?|telephone|tel|mobile(_?(number|phone))?|cell_?phone|msisdn|fax)"),
    ("PII.IPAddress", 0.8, r"(ip|ip_?address|ip_?addr|ipv4|ipv6|remote_?addr|client_?ip)"),
    ("PII.Name", 0.8, r"(first_?name|last_?name|full_?name|given_?name|family_?name|middle_?name|surname|forename)"),
    (
        "PII.Address",
        0.75,
        r"(street(_?address)?|address(_?line_?\d)?|postal_?(code|address)|post_?code|zip(_?code)?|home_?address)",
    ),
)
_COMPILED = tuple((c, conf, re.compile(rf"(^|_)({words})(_|$)")) for c, conf, words in _NAME_RULES)

_DESCRIPTION_RULES: tuple[tuple[str, str], ...] = (
    ("PII.Email", r"\be-?mail\b"),
    ("PII.CreditCard", r"\bcredit card\b|\bcard number\b"),
    ("PII.IBAN", r"\biban\b"),
    ("PII.NationalId", r"\bsocial security\b|\bnational (id|identity|insurance)\b|\bpassport\b"),
    ("PII.DateOfBirth", r"\bdate of birth\b|\bbirth ?date\b|\bbirthday\b"),
    ("PII.Phone", r"\bphone\b|\btelephone\b"),
    ("PII.IPAddress", r"\bip address\b"),
    ("PII.Name", r"\b(first|last|full|given|family) name\b|\bsurname\b"),
    ("PII.Address", r"\b(postal|street|home|mailing) address\b|\bpostcode\b|\bzip code\b"),
)
_DESCRIPTIONS = tuple((c, re.compile(p, re.IGNORECASE)) for c, p in _DESCRIPTION_RULES)
_DESCRIPTION_CONFIDENCE = 0.6
_IP_TYPES = frozenset({"inet", "cidr"})
_MAX_COLUMNS = 5000  # beyond this an asset is not a table a person designed; its first columns only


def words(name: str) -> str:
    """``customerEmailAddress`` → ``customer_email_address``."""
    spaced = re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", name)
    return "_".join(w for w in re.split(r"[^A-Za-z0-9]+", spaced.lower()) if w)


def classify_column(column: dict[str, Any]) -> Proposal | None:
    name = column.get("name")
    if not isinstance(name, str) or not name:
        return None
    joined = words(name)
    for classification, confidence, pattern in _COMPILED:
        if pattern.search(joined):
            return Proposal(classification, name, confidence, f"column name {name!r}")
    type_ = column.get("type") or column.get("data_type")
    if isinstance(type_, str) and type_.strip().lower() in _IP_TYPES:
        return Proposal("PII.IPAddress", name, 0.9, f"column type {type_!r}")
    description = column.get("description")
    if isinstance(description, str) and description:
        for classification, pattern in _DESCRIPTIONS:
            if pattern.search(description[:2000]):
                return Proposal(classification, name, _DESCRIPTION_CONFIDENCE, "column description")
    return None


class PiiClassifier:
    name = "pii"

    def classify(self, asset: dict[str, Any]) -> Sequence[Proposal]:
        columns = (asset.get("attributes") or {}).get("columns")
        if not isinstance(columns, list):
            return []
        found = []
        for column in columns[:_MAX_COLUMNS]:
            if isinstance(column, dict):
                proposal = classify_column(column)
                if proposal is not None:
                    found.append(proposal)
        return found
