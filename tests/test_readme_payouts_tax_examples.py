"""The README's "Payouts and balances" and "Tax" examples paste and run as written on the
stack `paystream dev` starts (review h74r): on a tenant of one's own (the demo's
`acme` pays out and moves its clock, so its figures were none of the example's), with
the calculation's id captured in a shell variable, the customer the subscription names
made in the block, and the rules a new user trips on stated (required fields, a line's
rates replacing the calculation's, the capability's name)."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

README = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")


def _section(title: str) -> str:
    start = README.index(f"\n## {title}\n")
    return README[start : README.index("\n## ", start + 1)]


def _shell_blocks(title: str) -> list[str]:
    return re.findall(r"```sh\n(.*?)```", _section(title), re.S)


@pytest.mark.parametrize("title", ["Payouts and balances", "Tax"])
def test_the_examples_run_on_a_tenant_of_ones_own(title: str) -> None:
    (block,) = _shell_blocks(title)
    tenants = set(re.findall(r"--tenant (\S+)", block))
    assert tenants and not tenants & {"acme", "globex"}, tenants  # the demo's tenants
    made = set(re.findall(r"paystream tenants add (\S+)", block))
    assert tenants <= made, f"{tenants - made} used before `tenants add`"
    assert "/v1/tenants/acme/" not in block
    # Nothing left to fill in by hand (a `taxcalc_...` pasted as written was refused).
    assert not [line for line in block.splitlines() if "..." in line.split("#")[0]]
    if shutil.which("bash"):
        checked = subprocess.run(["bash", "-n"], input=block, text=True, capture_output=True)
        assert checked.returncode == 0, checked.stderr


def test_the_tax_example_captures_the_calculation_and_makes_its_customer() -> None:
    (block,) = _shell_blocks("Tax")
    assert "taxcalc_..." not in block
    assert re.search(r"^calc=\$\(paystream send tax\.calculate", block, re.M), block
    assert '\\"tax_calculation_id\\": \\"$calc\\"' in block
    customer = block.index('customer.create --tenant bakery --data \'{"customer_id": "ada"}')
    attach = block.index("payment_method.attach --tenant bakery")
    assert customer < attach < block.index("subscription.create --tenant bakery")
    assert "ledger tax-report --tenant bakery" in block


def test_the_tax_section_states_what_a_new_user_trips_on() -> None:
    text = " ".join(_section("Tax").split())
    assert "`reference` (required, unique in the calculation" in text
    assert "`country` (ISO 3166-1 alpha-2, upper case: required here" in text
    assert "which **replaces** the calculation's `tax_rate_ids` for that line" in text
    assert "`capabilities` option leaves out `tax`" in text
    assert 'told to send `"20"`' in text


def test_the_payouts_section_says_which_failures_are_retryable() -> None:
    text = " ".join(_section("Payouts and balances").split())
    assert "`error.retryable` is true only for `could_not_process` and `insufficient_funds`" in text
