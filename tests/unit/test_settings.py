from pathlib import Path

import pytest

from featrec.errors import ConfigError
from featrec.settings import Settings


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
