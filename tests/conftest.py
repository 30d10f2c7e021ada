pytest_plugins = [
    "tests.fixtures.services",
    "tests.fixtures.pipeline",
    "tests.fixtures.localstripe",
    "tests.fixtures.redis_server",
    "tests.fixtures.square_fake",
]
