"""What the README's privacy paragraph says an erasure does not reach: it named the events
topic, the changelogs, RocksDB stores and the retry and dead-letter topics, never the
commands topic nor database backups (review h68ad)."""

from __future__ import annotations

from pathlib import Path

README = (Path(__file__).parent.parent / "README.md").read_text()


def _privacy() -> str:
    start = README.index("**Privacy.**")
    return README[start : README.index('<a id="retention"></a>', start)]


def test_the_privacy_paragraph_names_the_commands_topic() -> None:
    """customer.create and customer.update commands carry the e-mail, name, description
    and metadata in clear on the commands topic, which `paystream topics` makes with the
    broker's default retention (and the pipeline's own `past_retention` rule speaks of
    commands read 539 days late). The paragraph names the events topic, the changelogs,
    RocksDB stores and the retry and dead-letter topics, never the commands topic."""
    assert "commands topic" in _privacy()


def test_the_privacy_paragraph_names_database_backups() -> None:
    """Crypto-shredding deletes the data key's row; a backup (or WAL archive) taken
    before the erasure still holds the wrapped key, which the unchanged master key opens:
    a restore reads the erased customer's data again. Not said."""
    assert "backup" in _privacy().lower()
