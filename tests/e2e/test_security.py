"""Security: Redis AUTH and TLS from the environment, no secrets on disk or in messages, no
secrets in the repository, model artifacts never unpickled.

Real parts only: private redis-servers started with ``--requirepass`` and with ``--tls-port``
(a throwaway CA and server certificate are generated here with ``cryptography``), the real
sessions dataflow (``python -m bytewax.run``), the ``featrec`` CLI, and stock Feast reads.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import pickle
import re
import secrets
import shutil
import subprocess
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
import redis
from click.testing import CliRunner

from featrec.adapters.feast.repo import apply_repo, feast_redis_connection, open_store
from featrec.adapters.files.event_files import write_events
from featrec.adapters.files.model_store import MANIFEST_FILE, MODEL_FILE, file_sha256, load_model
from featrec.adapters.redis.streams import stream_length
from featrec.cli import main
from featrec.core.events.model import Event
from featrec.core.features.catalog import SESSION_FEATURES
from featrec.errors import ConfigError, StoreError
from featrec.settings import Settings, redact_url
from featrec.testing.crash import flow_env, make_events, session_rows, start_flow
from featrec.testing.redis_server import RedisServer, free_port

REPO_ROOT = Path(__file__).resolve().parents[2]
PASSWORD = "pw-" + secrets.token_hex(8)


def files_containing(root: Path, secret: str) -> list[Path]:
    needle = secret.encode()
    return [p for p in root.rglob("*") if p.is_file() and needle in p.read_bytes()]


def cli(settings: Settings, *args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, list(args), env=settings.to_env())
    return result.exit_code, result.output


# --- Redis AUTH ---------------------------------------------------------------------------


@pytest.fixture
def auth_server(tmp_path: Path) -> Iterator[RedisServer]:
    (tmp_path / "auth").mkdir()
    server = RedisServer(tmp_path / "auth", password=PASSWORD)
    server.start()
    yield server
    server.stop()


@pytest.mark.e2e
@pytest.mark.redis
def test_a_password_protected_redis_works_end_to_end_and_the_password_never_leaks(
    feast_repo: Settings, auth_server: RedisServer, tmp_path: Path
) -> None:
    settings = feast_repo.with_(online_store="redis", redis_url=auth_server.url)
    assert PASSWORD in settings.redis_url and PASSWORD not in repr(settings)
    with pytest.raises(redis.exceptions.AuthenticationError):
        redis.Redis(port=auth_server.port).set("x", "1")  # the server does require it

    events = make_events(300, seed=5)
    source = tmp_path / "events.jsonl"
    write_events(source, events)
    log = tmp_path / "flow.log"
    assert start_flow(flow_env(settings, str(source)), None, log).wait(timeout=120) == 0
    code, out = cli(settings, "publish", str(source))
    assert code == 0 and "published 300 events" in out
    assert stream_length(settings.redis_url, settings.stream) == 300

    # Rows as the fast reader and as stock Feast read them, both through the password.
    assert_both_readers_see(settings, events)

    code, out = cli(settings, "status")
    assert code == 0 and "event stream" in out
    # Nothing featrec wrote holds the password: status files, event log, dead letters, Feast
    # registry and data, the flow's own output, what the CLI printed.
    assert files_containing(settings.home, PASSWORD) == []
    assert files_containing(settings.repo, PASSWORD) == []
    assert PASSWORD not in log.read_text() and PASSWORD not in out


@pytest.mark.e2e
@pytest.mark.redis
def test_a_wrong_password_fails_clearly_without_printing_it(
    feast_repo: Settings, auth_server: RedisServer, tmp_path: Path
) -> None:
    wrong = "wrong-" + secrets.token_hex(6)
    settings = feast_repo.with_(
        online_store="redis", redis_url=f"redis://:{wrong}@127.0.0.1:{auth_server.port}/0"
    )
    source = tmp_path / "events.jsonl"
    write_events(source, make_events(50, seed=1))

    code, out = cli(settings, "publish", str(source))
    assert code == 1 and "check the password in FEATREC_REDIS_URL" in out
    assert wrong not in out and len(out.strip().splitlines()) == 1
    code, out = cli(settings, "status")
    assert "unreachable" in out and "check the password" in out and wrong not in out

    log = tmp_path / "flow.log"
    flow = start_flow(flow_env(settings, "redis"), None, log)
    assert flow.wait(timeout=120) != 0
    text = log.read_text()
    assert "check the password in FEATREC_REDIS_URL" in text and wrong not in text


def test_messages_about_a_redis_url_hide_its_password() -> None:
    url = f"redis://user:{PASSWORD}@cache.example:notaport/0"
    assert redact_url(url) == "redis://user:***@cache.example:notaport/0"
    assert redact_url("redis://127.0.0.1:6379/0") == "redis://127.0.0.1:6379/0"
    with pytest.raises(ConfigError) as info:
        feast_redis_connection(url)
    assert PASSWORD not in str(info.value) and "***" in str(info.value)
    with pytest.raises(ConfigError) as info:
        Settings(redis_url=f"http://:{PASSWORD}@host/0")
    assert PASSWORD not in str(info.value)


# --- TLS ----------------------------------------------------------------------------------


def write_certificates(directory: Path) -> tuple[Path, Path, Path]:
    """A throwaway CA and a server certificate for localhost/127.0.0.1: (ca, cert, key)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = dt.datetime.now(dt.UTC)

    def name(cn: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (
        x509.CertificateBuilder()
        .subject_name(name("featrec test CA"))
        .issuer_name(name("featrec test CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(name("localhost"))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    paths = directory / "ca.pem", directory / "server.pem", directory / "server.key"
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    paths[2].chmod(0o600)
    return paths


@pytest.fixture
def tls_server(tmp_path: Path) -> Iterator[tuple[int, Path]]:
    """A redis-server that speaks TLS only (``--port 0``): yields its port and CA file."""
    binary = shutil.which("redis-server")
    assert binary is not None, "redis-server is not installed"
    work = tmp_path / "tls"
    work.mkdir()
    ca, cert, key = write_certificates(work)
    port = free_port()
    args = [
        binary, "--port", "0", "--tls-port", str(port), "--bind", "127.0.0.1",
        "--tls-cert-file", str(cert), "--tls-key-file", str(key), "--tls-ca-cert-file", str(ca),
        "--tls-auth-clients", "no", "--save", "", "--appendonly", "no", "--dir", str(work),
    ]  # fmt: skip
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        client = redis.Redis(port=port, ssl=True, ssl_ca_certs=str(ca), socket_timeout=2)
        deadline = time.monotonic() + 10
        while True:
            if proc.poll() is not None:
                output = proc.stdout.read().decode() if proc.stdout else ""
                if "TLS" in output and ("not" in output or "Unrecognized" in output):
                    pytest.skip(f"this redis-server was built without TLS: {output[-300:]}")
                raise AssertionError(f"redis-server with TLS did not start: {output[-2000:]}")
            try:
                client.ping()
                break
            except redis.exceptions.ConnectionError:
                assert time.monotonic() < deadline, "redis-server with TLS did not answer"
                time.sleep(0.05)
        yield port, ca
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.mark.e2e
@pytest.mark.redis
def test_rediss_with_a_ca_from_the_environment_works_end_to_end(
    feast_repo: Settings, tls_server: tuple[int, Path], tmp_path: Path
) -> None:
    port, ca = tls_server
    url = f"rediss://127.0.0.1:{port}/0"
    settings = Settings.from_env(
        {
            **feast_repo.with_(online_store="redis").to_env(),
            "FEATREC_REDIS_URL": url,
            "FEATREC_REDIS_CA_CERT": str(ca),
        }
    )
    assert settings.redis_url == f"{url}?ssl_ca_certs={ca}"
    assert Settings.from_env(settings.to_env()) == settings  # a child process gets the same
    assert f"ssl=true,ssl_ca_certs={ca}" in feast_redis_connection(settings.redis_url)

    # The real flow (a child process: settings through FEATREC_* only) writes over TLS.
    events = make_events(300, seed=9)
    source = tmp_path / "events.jsonl"
    write_events(source, events)
    log = tmp_path / "flow.log"
    assert start_flow(flow_env(settings, str(source)), None, log).wait(timeout=120) == 0, (
        log.read_text()[-3000:]
    )
    assert_both_readers_see(settings, events)

    # Verification is on: without our CA, or in clear text, nothing is read.
    with pytest.raises(StoreError, match=r"certificate verify failed|CERTIFICATE_VERIFY"):
        stream_length(url, "featrec:events")
    with pytest.raises(StoreError):
        stream_length(f"redis://127.0.0.1:{port}/0", "featrec:events")


def test_a_ca_file_needs_rediss_and_must_exist(tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text("not checked here")
    with pytest.raises(ConfigError, match="does not use TLS"):
        Settings(redis_url="redis://127.0.0.1:6379/0", redis_ca_cert=ca)
    with pytest.raises(ConfigError, match="not a readable file"):
        Settings(redis_url="rediss://127.0.0.1:6379/0", redis_ca_cert=tmp_path / "none.pem")
    with pytest.raises(ConfigError, match="another CA"):
        Settings(redis_url="rediss://h:6379/0?ssl_ca_certs=/other.pem", redis_ca_cert=ca)
    bus = Settings(redis_url="rediss://h:1/0", bus_url="rediss://b:2/0", redis_ca_cert=ca)
    assert bus.stream_url == f"rediss://b:2/0?ssl_ca_certs={ca}"


# --- No secrets in the repository ---------------------------------------------------------

#: What a committed secret looks like. Placeholders (``PASSWORD``, ``$VAR``, ``${VAR}``,
#: ``***``) pass.
SECRET_PATTERNS = {
    "credentials in a Redis URL": re.compile(
        r"rediss?://[^:/\s@]*:(?!(?i:password)@|\*\*\*@|\$)[^@\s/]+@"
    ),
    "a private key": re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----"),
    "an AWS access key": re.compile(r"\bAKIA[0-9A-Z]{16}\b"),
    "a GitHub token": re.compile(r"\bgh[pousr]_[A-Za-z0-9]{36}\b"),
    "a password assignment": re.compile(
        r"(?i)\b(password|passwd|requirepass|secret|api_key|token)\s*[:=]\s*"
        r"['\"][^'\"${}*]{6,}['\"]"
    ),
}


def repository_files() -> list[Path]:
    """Tracked files and new files not ignored (what the next commit may hold), minus tests:
    tests hold throwaway credentials for their own private servers on purpose."""
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=REPO_ROOT, capture_output=True, text=True, check=True,
    ).stdout.split()  # fmt: skip
    return [
        REPO_ROOT / name
        for name in listed
        if not name.startswith("tests/") and (REPO_ROOT / name).is_file()
    ]


def test_no_secrets_are_committed() -> None:
    files = repository_files()
    assert any(f.name == "feature_store.redis.yaml" for f in files)
    found = []
    for path in files:
        text = path.read_text(errors="replace")
        for what, pattern in SECRET_PATTERNS.items():
            found += [f"{path.relative_to(REPO_ROOT)}: {what}: {m}" for m in pattern.findall(text)]
    assert found == []


def test_feature_store_yamls_take_connections_from_the_environment() -> None:
    import yaml

    for path in sorted((REPO_ROOT / "feature_repo").glob("feature_store*.yaml")):
        config = yaml.safe_load(path.read_text())
        online = config.get("online_store", {})
        for key, value in online.items():
            if key in ("connection_string", "password", "username", "ssl_ca_certs"):
                assert re.fullmatch(r"\$\{\w+\}", str(value)), f"{path.name}: {key} is literal"


def test_the_secret_patterns_find_what_they_are_for() -> None:
    """The scan above can fail: each pattern matches a planted example and spares placeholders."""
    planted = {
        "credentials in a Redis URL": "FEATREC_REDIS_URL=redis://:s3cr3t-value@db:6379/0",
        "a private key": "-----BEGIN EC PRIVATE KEY-----",
        "an AWS access key": "AKIAABCDEFGHIJKLMNOP",
        "a GitHub token": "ghp_" + "a" * 36,
        "a password assignment": 'password = "correct-horse"',
    }
    for what, text in planted.items():
        assert SECRET_PATTERNS[what].search(text), what
    for placeholder in (
        "redis://:PASSWORD@host:6379/0",
        "redis://:***@host/0",
        "redis://:$REDIS_PASSWORD@host/0",
        "redis://[[user]:password@]host",
    ):
        assert not any(p.search(placeholder) for p in SECRET_PATTERNS.values()), placeholder


# --- Model artifacts ----------------------------------------------------------------------


class _Payload:
    """Unpickling this creates a file: proof that a loader ran pickle."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str, str]]:
        return (open, (str(self.marker), "w"))


def test_a_pickle_renamed_to_a_model_is_refused_without_being_unpickled(tmp_path: Path) -> None:
    from featrec.adapters.files.model_store import save_model
    from featrec.testing.ranking import fitted_ranker as fitted

    root = tmp_path / "models"
    version = root / save_model(fitted(), root).version
    marker = tmp_path / "pwned"
    (version / MODEL_FILE).write_bytes(pickle.dumps(_Payload(marker)))
    # The attacker also rewrote the manifest's hash: only the format check is left to stop it.
    manifest = json.loads((version / MANIFEST_FILE).read_text())
    manifest["artifact_sha256"] = file_sha256(version / MODEL_FILE)
    (version / MANIFEST_FILE).write_text(json.dumps(manifest))
    with pytest.raises(ConfigError, match="not a skops file"):
        load_model(version, trusted_root=root)
    assert not marker.exists()


def assert_both_readers_see(settings: Settings, events: Sequence[Event]) -> None:
    """Every session's event count, as the fast reader and as stock Feast read them (both
    through whatever the settings' Redis URL demands: a password, TLS)."""
    counts = Counter(e.session_id for e in events)
    keys = sorted(counts)
    rows = session_rows(settings.redis_url, keys)
    assert {k: dict(r[1])["n_events"] for k, r in rows.items() if r} == counts
    apply_repo(settings)
    feast = open_store(settings).get_online_features(
        features=[f"{SESSION_FEATURES.name}:n_events"],
        entity_rows=[{"session_id": k} for k in keys],
    )
    assert dict(zip(keys, feast.to_dict()["n_events"], strict=True)) == counts
