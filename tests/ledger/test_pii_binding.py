"""Personal data is sealed to its place: a ciphertext copied to another customer, another
column, another event or another tenant does not open (mutation testing: a seal without
its row or column in the associated data passed every test)."""

from __future__ import annotations

import os

import pytest

from paystream.ledger import pii
from paystream.tenancy.crypto import CryptoError

KEY = os.urandom(32)
PERSON = {"email": "ann@example.com", "name": "Ann", "address": {"city": "Oslo"}}


def test_a_customers_columns_open_where_they_were_sealed_and_nowhere_else() -> None:
    sealed = pii.seal_customer_columns(KEY, "t1", "cus_ann", PERSON)
    opened = pii.open_customer_columns(KEY, "t1", "cus_ann", sealed)
    assert {k: opened[k] for k in PERSON} == PERSON
    for tenant, customer in (("t1", "cus_bob"), ("t2", "cus_ann")):
        with pytest.raises(CryptoError):
            pii.open_customer_columns(KEY, tenant, customer, sealed)
    swapped = {**sealed, "name_ciphertext": sealed["email_ciphertext"]}
    with pytest.raises(CryptoError):
        pii.open_customer_columns(KEY, "t1", "cus_ann", swapped)


def test_an_events_fields_open_where_they_were_sealed_and_nowhere_else() -> None:
    sealed = pii.seal_event_data(KEY, "t1", "evt_1", {"email": "ann@example.com", "name": "Ann"})
    assert pii.open_event_data(KEY, "t1", "evt_1", sealed)["email"] == "ann@example.com"
    with pytest.raises(CryptoError):
        pii.open_event_data(KEY, "t1", "evt_2", sealed)
    with pytest.raises(CryptoError):
        pii.open_event_data(KEY, "t1", "evt_1", {**sealed, "name": sealed["email"]})
