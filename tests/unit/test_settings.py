"""The settings models: every FEATREC_* variable typed, bounded, known, documented."""

from __future__ import annotations

import pickle
import re
import warnings
from pathlib import Path
from typing import Any, get_args

import pytest

from featrec.app.serving.config import REQUEST_LOGS, ServingConfig
from featrec.app.serving.http_limits import HttpLimits
from featrec.core.events.formats import FORMATS
from featrec.errors import ConfigError
from featrec.settings import (
    MODELS,
    EnvModel,
    FlowSettings,
    KafkaSettings,
    ServeSettings,
    Settings,
    UnknownVariableWarning,
    variables,
    warn_unknown,
)

ROOT = Path(__file__).resolve().parents[2]

#: A bad value from the environment for every variable that can have one, and what the
#: message must say is allowed.
BAD_FROM_ENV = {
    "FEATREC_ONLINE_STORE": ("mysql", "one of: sqlite, redis"),
    "FEATREC_REDIS_URL": ("http://cache:6379/0", "a URL starting with redis://, rediss://"),
    "FEATREC_BUS_URL": ("tcp://bus:6379", "a URL starting with redis://, rediss://"),
    "FEATREC_REDIS_CLUSTER_NODES": ("redis1:6379,redis2", "comma-separated `host:port`"),
    "FEATREC_REDIS_CLUSTER_WAIT_REPLICAS": ("-1", "an integer >= 0"),
    "FEATREC_WRITER": ("fastest", "one of: fast, feast"),
    "FEATREC_BATCH_MAX_ROWS": ("0", "an integer >= 1"),
    "FEATREC_BATCH_DEADLINE_MS": ("-5", "a finite number > 0"),
    "FEATREC_SESSION_GAP_S": ("0", "a finite number > 0"),
    "FEATREC_ALLOWED_LATENESS_S": ("-1", "a finite number >= 0"),
    "FEATREC_STATE_TTL_S": ("nan", "a finite number > 0"),
    "FEATREC_ITEM_WRITE_INTERVAL_S": ("soon", "a finite number >= 0"),
    "FEATREC_ITEM_IDLE_S": ("inf", "a finite number > 0"),
    "FEATREC_FLOW_SHAPE": ("per-batch", "one of: batch, per-event"),
    "FEATREC_SERVE_MAX_BODY_BYTES": ("64k", "an integer >= 1"),
    "FEATREC_SERVE_RATE_LIMIT": ("fast", "a finite number >= 0"),
    "FEATREC_SERVE_RATE_BURST": ("0", "an integer >= 1"),
    "FEATREC_SERVE_MAX_CONCURRENT": ("65", "an integer from 1 to 64"),
    "FEATREC_SERVE_MAX_INFLIGHT": ("-1", "an integer >= 0"),
    "FEATREC_SERVE_DEADLINE_MS": ("0", "a finite number > 0"),
    "FEATREC_SERVE_REQUEST_LOG": ("kafka", "one of: sqlite, redis"),
    "FEATREC_SERVE_MAX_SESSION_AGE_S": ("-1", "a finite number >= 0"),
    "FEATREC_SERVE_ITEM_CACHE_S": ("a while", "a finite number >= 0"),
    "FEATREC_SERVE_REQUEST_LOG_KEEP_H": ("0.5", "a finite number >= 1"),
    "FEATREC_SERVE_CANDIDATES": ("5001", "an integer from 1 to 5000"),
    "FEATREC_SERVE_EXPERIMENT": ("[1, 2]", "a JSON object"),
    "FEATREC_SERVE_COLLECT_MAPPING": ("{not json", "a JSON object"),
    "FEATREC_SERVE_COLLECT_BUS": ("nats", "one of: auto, redis, kafka, file"),
    "FEATREC_SERVE_COLLECT_RATE": ("-1", "a finite number >= 0"),
    "FEATREC_SERVE_COLLECT_BURST": ("0", "an integer >= 1"),
    "FEATREC_SERVE_COLLECT_MAX_EVENTS": ("10001", "an integer from 1 to 10000"),
    "FEATREC_SOURCE_FORMAT": ("csv", "one of: featrec, otto, session-rec"),
    "FEATREC_REPLAY_SPEED": ("-2", "a finite number >= 0"),
    "FEATREC_SOURCE_MAPPING": ('["fields"]', "a JSON object"),
    "FEATREC_SOURCE_UNTIL_END": ("maybe", "`1`/`true` or `0`/`false`"),
    "FEATREC_SESSION_COOL_S": ("0", "a finite number > 0"),
    "FEATREC_BUS": ("nats", "one of: redis, kafka"),
    "FEATREC_KAFKA_SECURITY_PROTOCOL": ("tls", "one of: plaintext, ssl, sasl_plaintext"),
    "FEATREC_KAFKA_SASL_MECHANISM": ("GSSAPI", "one of: PLAIN, SCRAM-SHA-256, SCRAM-SHA-512"),
}

#: Variables whose every (non-empty) string is valid: a wrong type given in code still gets
#: the variable's name and what is allowed.
BAD_IN_CODE = {
    "FEATREC_HOME": (3, "a path"),
    "FEATREC_REPO": ([], "a path"),
    "FEATREC_REDIS_CA_CERT": (1.5, "a path"),
    "FEATREC_STREAM": ("", "a non-empty string"),
    "FEATREC_DEAD_LETTER_STREAM": ("", "a non-empty string"),
    "FEATREC_SERVE_MODEL": ("", "a model version, `auto`, `latest` or `none`"),
    "FEATREC_ADMIN_TOKEN": (12, "a secret"),
    "FEATREC_SOURCE": (7, "event file paths, `redis`, `kafka` or `collector`"),
    "FEATREC_KAFKA_BROKERS": ("", "a non-empty string"),
    "FEATREC_KAFKA_TOPIC": ("", "a non-empty string"),
    "FEATREC_KAFKA_DEAD_LETTER_TOPIC": ("", "a non-empty string"),
    "FEATREC_KAFKA_SASL_USERNAME": (7, "a non-empty string"),
    "FEATREC_KAFKA_SASL_PASSWORD": (12, "a secret"),
    "FEATREC_KAFKA_SSL_CA_LOCATION": (7, "a path"),
    "FEATREC_SERVE_CORS_ORIGINS": (7, "comma-separated origins, or `*`"),
    "FEATREC_INGEST_TOKEN": (12, "a secret"),
    "FEATREC_EVAL_DIR": (7, "a path"),
    "FEATREC_COLD_SESSIONS": (7, "a path"),
    "FEATREC_PROJECT": (7, "a path"),
}


def test_defaults_are_the_embedded_store() -> None:
    s = Settings.from_env({})
    assert s.online_store == "sqlite"
    assert s.state_ttl == s.session_gap_s


def test_environment_is_typed() -> None:
    s = Settings.from_env(
        {
            "FEATREC_HOME": "/tmp/x",
            "FEATREC_BATCH_MAX_ROWS": "7",
            "FEATREC_SESSION_GAP_S": "60",
            "FEATREC_ALLOWED_LATENESS_S": "10",
            "FEATREC_ONLINE_STORE": "redis",
        }
    )
    assert s.home == Path("/tmp/x")
    assert s.batch_max_rows == 7
    assert s.session_policy.gap_s == 60.0
    assert s.online_store == "redis"


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"FEATREC_ONLINE_STORE": "mongo"}, "FEATREC_ONLINE_STORE='mongo' is not one of: sqlite"),
        ({"FEATREC_BATCH_MAX_ROWS": "many"}, "FEATREC_BATCH_MAX_ROWS='many' is not an integer"),
        ({"FEATREC_BATCH_MAX_ROWS": "0"}, "FEATREC_BATCH_MAX_ROWS='0' is not an integer >= 1"),
        (
            {"FEATREC_REDIS_URL": "localhost:6379"},
            "FEATREC_REDIS_URL is not a URL starting with redis://",
        ),
        ({"FEATREC_SESSION_GAP_S": "60", "FEATREC_ALLOWED_LATENESS_S": "120"}, "lateness"),
    ],
)
def test_bad_settings_say_what_is_wrong(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        Settings.from_env(env)


def test_round_trip_through_environment() -> None:
    s = Settings(batch_max_rows=3, online_store="redis", state_ttl_s=2.5)
    assert Settings.from_env(s.to_env()) == s


def test_password_is_not_in_repr() -> None:
    s = Settings(redis_url="redis://:hunter2@127.0.0.1:6379/0")
    assert "hunter2" not in repr(s)


def model_and_field(variable: str) -> tuple[type[EnvModel], str]:
    for model in MODELS:
        for name in model.model_fields:
            if model.variable(name) == variable:
                return model, name
    raise AssertionError(f"{variable} is in no model")


def read(model: type[EnvModel], environ: dict[str, str]) -> EnvModel:
    """``model.from_env``, for any of the models."""
    if model is Settings:
        return Settings.from_env(environ)
    if model is ServeSettings:
        return ServeSettings.from_env(environ)
    if model is KafkaSettings:
        return KafkaSettings.from_env(environ)
    return FlowSettings.from_env(environ)


def test_every_variable_has_a_bad_value_case() -> None:
    declared = {model.variable(name) for model in MODELS for name in model.model_fields}
    assert declared == BAD_FROM_ENV.keys() | BAD_IN_CODE.keys()


@pytest.mark.parametrize(("variable", "case"), sorted(BAD_FROM_ENV.items()))
def test_a_bad_value_names_the_variable_and_what_is_allowed(
    variable: str, case: tuple[str, str]
) -> None:
    raw, allowed = case
    model, _ = model_and_field(variable)
    with pytest.raises(ConfigError) as info:
        read(model, {variable: raw})
    message = str(info.value)
    assert message.startswith(f"{variable}={raw!r} is not {allowed}"), message
    assert "\n" not in message and "pydantic" not in message and "validation error" not in message


@pytest.mark.parametrize(("variable", "case"), sorted(BAD_IN_CODE.items()))
def test_a_bad_value_in_code_names_the_variable_too(variable: str, case: tuple[Any, str]) -> None:
    value, allowed = case
    model, name = model_and_field(variable)
    with pytest.raises(ConfigError) as info:
        model(**{name: value})
    message = str(info.value)
    if variable in {"FEATREC_ADMIN_TOKEN", "FEATREC_KAFKA_SASL_PASSWORD", "FEATREC_INGEST_TOKEN"}:
        assert message == f"{variable} is not {allowed}"
    else:
        assert message == f"{variable}={value!r} is not {allowed}"


def test_several_bad_values_are_one_line() -> None:
    with pytest.raises(ConfigError) as info:
        Settings.from_env({"FEATREC_WRITER": "x", "FEATREC_BATCH_MAX_ROWS": "y"})
    assert str(info.value) == (
        "FEATREC_WRITER='x' is not one of: fast, feast; "
        "FEATREC_BATCH_MAX_ROWS='y' is not an integer >= 1"
    )


def test_lateness_beyond_the_gap_names_both_variables() -> None:
    env = {"FEATREC_SESSION_GAP_S": "60", "FEATREC_ALLOWED_LATENESS_S": "120"}
    with pytest.raises(ConfigError, match=r"^FEATREC_ALLOWED_LATENESS_S=120\.0 .*SESSION_GAP_S"):
        Settings.from_env(env)


def test_messages_never_show_a_password_or_the_admin_token() -> None:
    with pytest.raises(ConfigError) as info:
        Settings.from_env({"FEATREC_REDIS_URL": "http://:hunter2@cache:6379/0"})
    assert "hunter2" not in str(info.value) and "http://:***@cache:6379/0" in str(info.value)
    with pytest.raises(ConfigError) as info:
        Settings.from_env({"FEATREC_REDIS_URL": "user:hunter2@cache"})  # no scheme: not shown
    assert "hunter2" not in str(info.value)
    serve = ServeSettings.from_env({"FEATREC_ADMIN_TOKEN": "a-token-of-sixteen-chars"})
    assert "a-token" not in repr(serve) and "a-token" not in str(serve)
    assert serve.admin_token is not None
    assert serve.admin_token.get_secret_value() == "a-token-of-sixteen-chars"


def test_a_blank_admin_token_is_unset() -> None:
    assert ServeSettings.from_env({"FEATREC_ADMIN_TOKEN": "   "}).admin_token is None


# --- unknown variables ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("typo", "meant"),
    [
        ("FEATREC_ONLNE_STORE", "FEATREC_ONLINE_STORE"),
        ("FEATREC_REDIS_ULR", "FEATREC_REDIS_URL"),
        ("FEATREC_SESSION_GAP", "FEATREC_SESSION_GAP_S"),
        ("FEATREC_SERVE_RATE_LIMT", "FEATREC_SERVE_RATE_LIMIT"),
        ("FEATREC_SERVE_ADMIN_TOKEN", "FEATREC_ADMIN_TOKEN"),
        ("FEATREC_SOURCE_FMT", "FEATREC_SOURCE_FORMAT"),
    ],
)
def test_a_misspelt_variable_warns_with_the_closest_name(typo: str, meant: str) -> None:
    with pytest.warns(UnknownVariableWarning) as record:
        settings = Settings.from_env({typo: "redis"})
    assert settings == Settings()
    assert [str(w.message) for w in record] == [
        f"{typo} is not a featrec variable, ignored; did you mean {meant}?"
    ]
    assert record[0].filename == __file__  # blames the caller of from_env


def test_an_unknown_variable_without_a_close_name_warns_without_a_guess() -> None:
    with pytest.warns(UnknownVariableWarning, match=r"^FEATREC_WHATEVER is not .*, ignored$"):
        Settings.from_env({"FEATREC_WHATEVER": "1", "PATH": "/bin", "REDIS_URL": "x"})


def test_known_variables_and_other_variables_do_not_warn() -> None:
    everything = {v.name: "1" for v in variables()}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert warn_unknown(everything) == []
        assert warn_unknown({"PATH": "/bin", "FEATRECX": "1", "MY_FEATREC_HOME": "x"}) == []


def test_every_featrec_variable_in_the_tree_is_known() -> None:
    """What the code, dataflows, Feast yaml, deployment files and tests mention is known: a
    new reader cannot add a variable that from_env would warn about."""
    known = {v.name for v in variables()}
    local = {"FEATREC_LINE", "FEATREC_TEST_UNSET"}  # a test constant; a variable kept unset
    found: dict[str, str] = {}
    pattern = re.compile(r"\bFEATREC_[A-Z0-9_]*[A-Z0-9]\b")
    for folder in ("src", "dataflows", "feature_repo", "infra", "tests", "benchmarks"):
        for path in (ROOT / folder).rglob("*"):
            if path.suffix in {".py", ".yaml", ".yml", ".conf"} and path != Path(__file__):
                for name in pattern.findall(path.read_text(encoding="utf-8")):
                    found.setdefault(name, str(path.relative_to(ROOT)))
    assert len(found) > 20
    assert {k: v for k, v in found.items() if k not in known | local} == {}


# --- defaults, round trips, reading ------------------------------------------------------

OLD_DEFAULTS = {
    "home": Path(".featrec"),
    "repo": Path("feature_repo"),
    "online_store": "sqlite",
    "redis_url": "redis://127.0.0.1:6379/0",
    "redis_ca_cert": None,
    "redis_cluster_nodes": None,
    "redis_cluster_wait_replicas": 0,
    "bus_url": None,
    "stream": "featrec:events",
    "bus": "redis",
    "dead_letter_stream": "featrec:deadletters",
    "writer": "fast",
    "batch_max_rows": 1000,
    "batch_deadline_ms": 10.0,
    "session_gap_s": 1800.0,
    "allowed_lateness_s": 300.0,
    "state_ttl_s": None,
    "item_write_interval_s": 5.0,
    "item_idle_s": 600.0,
    "project": None,
    "flow_shape": "batch",
}


def test_defaults_are_unchanged() -> None:
    settings = Settings.from_env({})
    assert settings.field_values() == OLD_DEFAULTS
    assert settings == Settings()
    assert settings.stream_url == "redis://127.0.0.1:6379/0"
    assert settings.state_ttl == 1800.0
    assert settings.items_dead_letter_stream == "featrec:deadletters:items"
    assert settings.event_log_dir == Path(".featrec/events")


def test_serve_defaults_are_the_serving_and_limit_defaults() -> None:
    serve = ServeSettings.from_env({})
    assert HttpLimits.from_settings(serve) == HttpLimits()
    config = ServingConfig()
    assert (serve.max_session_age_s, serve.item_cache_s) == (
        config.max_session_age_s,
        config.item_cache_s,
    )
    assert serve.candidates == config.candidates.max_total
    assert (serve.model, serve.request_log, serve.experiment, serve.admin_token) == (
        "auto",
        "sqlite",
        None,
        None,
    )
    assert FlowSettings.from_env({}) == FlowSettings(replay_speed=0.0)


def test_choices_agree_with_the_code_that_uses_them() -> None:
    serve_log = ServeSettings.model_fields["request_log"].annotation
    assert get_args(serve_log) == REQUEST_LOGS
    formats = FlowSettings.model_fields["source_format"].annotation
    assert get_args(get_args(formats)[0]) == FORMATS


def test_round_trip_through_the_environment(tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text("not read here")
    settings = Settings(
        home=tmp_path,
        online_store="redis",
        redis_url="rediss://:pw@cache:6380/2",
        redis_ca_cert=ca,
        bus_url="rediss://bus:6379/0",
        stream="a,b",
        writer="feast",
        batch_max_rows=3,
        batch_deadline_ms=2.5,
        session_gap_s=60,
        allowed_lateness_s=0,
        state_ttl_s=2.5,
        item_write_interval_s=0,
        item_idle_s=1,
    )
    assert settings.redis_url == f"rediss://:pw@cache:6380/2?ssl_ca_certs={ca}"
    again = Settings.from_env(settings.to_env())
    assert again == settings and again.to_env() == settings.to_env()
    serve = ServeSettings(
        rate_limit=0,
        max_concurrent=64,
        model="v3",
        request_log="redis",
        candidates=7,
        experiment={"name": "e", "arms": {"a": 1}},
        admin_token="x" * 16,
    )
    assert ServeSettings.from_env(serve.to_env()) == serve
    flow = FlowSettings(source="a.jsonl", source_format="otto", replay_speed=2, eval_dir=tmp_path)
    assert FlowSettings.from_env(flow.to_env()) == flow
    kafka = KafkaSettings(
        brokers="k1:9093,k2:9093",
        topic="t",
        security_protocol="sasl_ssl",
        sasl_mechanism="SCRAM-SHA-512",
        sasl_username="shop",
        sasl_password="s3cret",
        ssl_ca_location=ca,
    )
    assert KafkaSettings.from_env(kafka.to_env()) == kafka
    assert "s3cret" not in repr(kafka)


def test_kafka_security_is_passed_through_and_sasl_must_be_complete(tmp_path: Path) -> None:
    from featrec.adapters.kafka.config import client_config, describe, producer_config

    env = {
        "FEATREC_KAFKA_BROKERS": "k1:9093,k2:9093",
        "FEATREC_KAFKA_SECURITY_PROTOCOL": "sasl_ssl",
        "FEATREC_KAFKA_SASL_MECHANISM": "PLAIN",
        "FEATREC_KAFKA_SASL_USERNAME": "shop",
        "FEATREC_KAFKA_SASL_PASSWORD": "s3cret",
        "FEATREC_KAFKA_SSL_CA_LOCATION": str(tmp_path / "ca.pem"),
    }
    config = client_config(KafkaSettings.from_env(env))
    assert config == {
        "bootstrap.servers": "k1:9093,k2:9093",
        "security.protocol": "sasl_ssl",
        "sasl.mechanism": "PLAIN",
        "sasl.username": "shop",
        "sasl.password": "s3cret",
        "ssl.ca.location": str(tmp_path / "ca.pem"),
    }
    produce = producer_config(KafkaSettings.from_env(env))
    assert produce["partitioner"] == "murmur2_random" and produce["sasl.password"] == "s3cret"
    assert "s3cret" not in describe(KafkaSettings.from_env(env))
    assert client_config(KafkaSettings.from_env({})) == {
        "bootstrap.servers": "127.0.0.1:9092",
        "security.protocol": "plaintext",
    }
    del env["FEATREC_KAFKA_SASL_PASSWORD"]
    with pytest.raises(ConfigError, match="FEATREC_KAFKA_SECURITY_PROTOCOL='sasl_ssl' needs"):
        KafkaSettings.from_env(env)


def test_from_env_reads_only_the_mapping_it_is_given(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FEATREC_BATCH_MAX_ROWS", "7")
    monkeypatch.setenv("FEATREC_SERVE_CANDIDATES", "9")
    assert Settings().batch_max_rows == 1000
    assert Settings.from_env({}).batch_max_rows == 1000
    assert ServeSettings.from_env({}).candidates == 100
    assert Settings.from_env({"FEATREC_BATCH_MAX_ROWS": "7"}).batch_max_rows == 7


def test_empty_variables_are_unset_and_overrides_win() -> None:
    env = {"FEATREC_HOME": "", "FEATREC_WRITER": "feast", "FEATREC_BATCH_MAX_ROWS": " 8 "}
    settings = Settings.from_env(env, writer="fast", home=None)
    assert (settings.home, settings.writer, settings.batch_max_rows) == (
        Path(".featrec"),
        "fast",
        8,
    )


def test_with_validates_and_settings_stay_frozen() -> None:
    settings = Settings()
    assert settings.with_(batch_max_rows=5).batch_max_rows == 5
    assert settings.batch_max_rows == 1000
    with pytest.raises(ConfigError, match="FEATREC_BATCH_MAX_ROWS=0 is not"):
        settings.with_(batch_max_rows=0)
    with pytest.raises(ConfigError, match="has no setting 'batch_size'"):
        settings.with_(batch_size=5)
    with pytest.raises(ValueError, match="frozen"):
        settings.batch_max_rows = 5  # type: ignore[misc]


def test_settings_are_hashable_and_picklable() -> None:
    settings = Settings(batch_max_rows=3)
    assert hash(settings) == hash(Settings(batch_max_rows=3))
    assert pickle.loads(pickle.dumps(settings)) == settings


# --- the README's table -------------------------------------------------------------------

START = "<!-- settings table: generated from featrec.settings.variables() -->"
END = "<!-- end of settings table -->"


def markdown_table() -> str:
    rows = ["| variable | default | allowed | meaning |", "|---|---|---|---|"]
    rows += [f"| `{v.name}` | {v.default} | {v.allowed} | {v.meaning} |" for v in variables()]
    return "\n".join(rows)


def test_the_readme_table_lists_every_variable() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert START in readme and END in readme
    table = readme.split(START, 1)[1].split(END, 1)[0].strip()
    expected = markdown_table()
    assert table == expected, f"README.md's settings table should read:\n\n{expected}\n"


def test_the_collector_bus_follows_the_event_bus_then_the_online_store() -> None:
    assert Settings(bus="kafka").collector_bus("auto") == "kafka"
    assert Settings(online_store="redis").collector_bus("auto") == "redis"
    assert Settings().collector_bus("auto") == "file"
    assert Settings(bus="kafka").collector_bus("file") == "file"  # an explicit choice wins
