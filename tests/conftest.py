import pytest

pytest_plugins = [
    "tests.fixtures.services",
    "tests.fixtures.pipeline",
    "tests.fixtures.localstripe",
    "tests.fixtures.redis_server",
    "tests.fixtures.square_fake",
    "tests.fixtures.paddle_fake",
]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Files of end-to-end tests (any test marked ``slow``) run first. pytest-xdist hands
    out whole files in this order (scripts/test passes ``--no-loadscope-reorder``; its own
    order, most tests first, left the minute-long one-test files to the end, where one
    process ran them while the other had nothing left): longest first, the many short
    files then even the two processes out."""
    slow_files = {item.path for item in items if item.get_closest_marker("slow")}
    items.sort(key=lambda item: item.path not in slow_files)
