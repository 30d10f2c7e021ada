"""DATABASE_URL with libpq's TLS parameters (what managed PostgreSQL services hand out:
``?sslmode=verify-full&sslrootcert=/path/ca.pem``), over TLS with a certificate from a CA
made here. The embedded PostgreSQL is built without TLS, so the TLS end is a proxy in
front of it that speaks PostgreSQL's own TLS negotiation (SSLRequest, then the
handshake on the same connection), as a server built with it does.

Review finding: SQLAlchemy passed them to asyncpg.connect() as keyword arguments, which
has none of them: every database path failed with a TypeError (the ledger sink retrying
for ever, `paystream migrate` with a traceback), and the only TLS that worked, `ssl=require`,
checks no certificate."""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import shutil
import ssl
import struct
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from sqlalchemy import make_url, text

from paystream.devstack.postgres import EmbeddedPostgres
from paystream.doctor import check_database
from paystream.ledger.migrate import create_database, current, upgrade
from paystream.ledger.session import create_engine
from paystream.ledger.sink import asyncpg_url
from paystream.settings import load_settings


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _ca(directory: Path, name: str) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(name))
        .issuer_name(_name(name))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    (directory / f"{name}.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return key, cert


def _server_context(
    directory: Path, ca_key: ec.EllipticCurvePrivateKey, ca: x509.Certificate, host: str
) -> ssl.SSLContext:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(host))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(host))]),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    (directory / "server.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (directory / "server.key").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(directory / "server.crt", directory / "server.key")
    return context


_SSL_REQUEST = struct.pack("!ii", 8, 80877103)


class TlsProxy:
    """PostgreSQL's TLS end in front of a server without it: answers a client's
    SSLRequest with "S", takes the TLS handshake, then relays the session in the clear to
    the server. Counts the handshakes completed. Runs on a loop of its own (a thread)."""

    def __init__(self, context: ssl.SSLContext, upstream: tuple[str, int]) -> None:
        self.context, self.upstream = context, upstream
        self.handshakes = 0
        self.loop = asyncio.new_event_loop()
        self.port = 0
        ready = threading.Event()
        self.thread = threading.Thread(target=self._serve, args=(ready,), daemon=True)
        self.thread.start()
        assert ready.wait(10)

    def _serve(self, ready: threading.Event) -> None:
        asyncio.set_event_loop(self.loop)
        server = self.loop.run_until_complete(asyncio.start_server(self._client, "127.0.0.1", 0))
        self.port = server.sockets[0].getsockname()[1]
        ready.set()
        self.loop.run_forever()
        server.close()
        # The sessions still relaying: ended here, on their loop, not collected once it
        # is closed (each then warned "Event loop is closed" into a later test).
        pending = asyncio.all_tasks(self.loop)
        for task in pending:
            task.cancel()
        self.loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
        self.loop.close()

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            if await reader.readexactly(8) != _SSL_REQUEST:
                return  # (this end is TLS only)
            writer.write(b"S")
            await writer.drain()
            await writer.start_tls(self.context)
            self.handshakes += 1
            up_reader, up_writer = await asyncio.open_connection(*self.upstream)
            await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))
        except (OSError, asyncio.IncompleteReadError, ssl.SSLError):
            pass  # (a client refusing the certificate hangs up mid-handshake)
        finally:
            writer.close()

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    finally:
        writer.close()


@pytest.fixture(scope="module")
def tls_server() -> Iterator[tuple[EmbeddedPostgres, TlsProxy, Path]]:
    """A PostgreSQL of its own behind a TLS end, and a directory with the CA that signed
    the TLS end's certificate (ca.pem) and one that did not (other.pem)."""
    root = Path(tempfile.mkdtemp(prefix="paystream-pg-tls-"))  # not tmp_path: see services.py
    pg = EmbeddedPostgres(root / "pg")
    pg.start()
    proxy: TlsProxy | None = None
    try:
        certs = root / "certs"
        certs.mkdir()
        ca_key, ca = _ca(certs, "ca")
        _ca(certs, "other")
        proxy = TlsProxy(_server_context(certs, ca_key, ca, pg.host), (pg.host, pg.port))
        yield pg, proxy, certs
    finally:
        if proxy is not None:
            proxy.close()
        pg.stop()
        shutil.rmtree(root, ignore_errors=True)


def _via(pg: EmbeddedPostgres, proxy: TlsProxy, query: str) -> str:
    return f"{pg.url.replace(f':{pg.port}/', f':{proxy.port}/')}?{query}"


async def _select_one(url: str) -> int:
    engine = create_engine(url, pool_pre_ping=False)
    try:
        async with engine.connect() as conn:
            return int(await conn.scalar(text("SELECT 1")))
    finally:
        await engine.dispose()


@pytest.mark.parametrize(
    "query",
    [
        "sslmode=verify-full&sslrootcert={ca}",
        "ssl=verify-full&sslrootcert={ca}",  # (SQLAlchemy's spelling of the mode)
        "sslmode=verify-ca&sslrootcert={ca}",
        "sslmode=require",
    ],
)
def test_libpq_tls_parameters_connect_over_tls(
    tls_server: tuple[EmbeddedPostgres, TlsProxy, Path], query: str
) -> None:
    pg, proxy, certs = tls_server
    url = _via(pg, proxy, query.format(ca=certs / "ca.pem"))
    settings = load_settings(database_url=url)  # accepted as given
    assert settings.database_url is not None
    before = proxy.handshakes
    assert asyncio.run(_select_one(settings.database_url)) == 1
    assert asyncio.run(check_database(settings)).startswith("select 1 ok")
    assert proxy.handshakes >= before + 2


def test_a_certificate_from_another_ca_is_refused(
    tls_server: tuple[EmbeddedPostgres, TlsProxy, Path],
) -> None:
    pg, proxy, certs = tls_server
    url = _via(pg, proxy, f"sslmode=verify-full&sslrootcert={certs / 'other.pem'}")
    with pytest.raises(ssl.SSLCertVerificationError):
        asyncio.run(_select_one(url))


def test_migrate_runs_over_verified_tls(
    tls_server: tuple[EmbeddedPostgres, TlsProxy, Path],
) -> None:
    """`paystream migrate` (and the alembic run inside it) over the same URL."""
    pg, proxy, certs = tls_server
    url = _via(pg, proxy, f"sslmode=verify-full&sslrootcert={certs / 'ca.pem'}")
    asyncio.run(upgrade(url))
    assert asyncio.run(current(url)) is not None


def test_a_url_without_tls_parameters_is_passed_as_before(
    tls_server: tuple[EmbeddedPostgres, TlsProxy, Path],
) -> None:
    pg, _, _ = tls_server
    assert asyncio.run(_select_one(f"{pg.url}?ssl=disable")) == 1


@pytest.mark.parametrize(
    "more",
    ["prepared_statement_cache_size=0", "command_timeout=30"],  # (behind PgBouncer; asyncpg's)
)
def test_the_urls_other_parameters_still_reach_the_driver(
    tls_server: tuple[EmbeddedPostgres, TlsProxy, Path], more: str
) -> None:
    """Review finding: in the DSN with the TLS parameters, asyncpg took them for server
    settings, and PostgreSQL refused every connect."""
    pg, proxy, _ = tls_server
    assert asyncio.run(_select_one(_via(pg, proxy, f"sslmode=require&{more}"))) == 1


def test_a_url_naming_several_hosts_keeps_them(
    tls_server: tuple[EmbeddedPostgres, TlsProxy, Path],
) -> None:
    """The first host up, the second down (SQLAlchemy's ``?host=a:1&host=b:2``): review
    finding, the DSN kept the last alone."""
    pg, proxy, _ = tls_server
    url = make_url(pg.url)
    head = f"postgresql+asyncpg://{url.username}:{url.password}@/{url.database}"
    hosts = f"host={pg.host}:{proxy.port}&host={pg.host}:1"
    assert asyncio.run(_select_one(f"{head}?{hosts}&sslmode=require")) == 1


def test_a_database_made_for_a_bench_keeps_the_urls_tls(
    tls_server: tuple[EmbeddedPostgres, TlsProxy, Path],
) -> None:
    """Review finding: the new database's URL was cut at the last "/" (inside the CA's
    path, or with the query gone), and the bench's ledger connected without TLS."""
    pg, proxy, certs = tls_server
    url = _via(pg, proxy, f"sslmode=verify-full&sslrootcert={certs / 'ca.pem'}")
    made = make_url(asyncio.run(create_database(asyncpg_url(url), "tlsbench")))
    assert made.database is not None and made.database.startswith("tlsbench_")
    assert made.query["sslrootcert"] == str(certs / "ca.pem")
    before = proxy.handshakes
    assert asyncio.run(_select_one(made.render_as_string(hide_password=False))) == 1
    assert proxy.handshakes > before
