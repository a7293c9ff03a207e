"""Kafka client errors in featrec's tree (see :mod:`featrec.errors`).

Transport failures (broker unreachable, timeouts) are :class:`~featrec.errors.StoreUnavailable`
(retrying may help), authentication failures :class:`~featrec.errors.ConfigError`, anything else
:class:`~featrec.errors.StoreError`.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Final

from confluent_kafka import KafkaError, KafkaException

from featrec.errors import ConfigError, StoreError, StoreUnavailable

_UNAVAILABLE: Final = {
    KafkaError._TRANSPORT,
    KafkaError._ALL_BROKERS_DOWN,
    KafkaError._TIMED_OUT,
    KafkaError._MSG_TIMED_OUT,
    KafkaError._RESOLVE,
    KafkaError.REQUEST_TIMED_OUT,
    KafkaError.NETWORK_EXCEPTION,
    KafkaError.LEADER_NOT_AVAILABLE,
    KafkaError.NOT_LEADER_FOR_PARTITION,
}
_CONFIG: Final = {
    KafkaError._AUTHENTICATION,
    KafkaError.SASL_AUTHENTICATION_FAILED,
    KafkaError.TOPIC_AUTHORIZATION_FAILED,
    KafkaError.CLUSTER_AUTHORIZATION_FAILED,
    KafkaError._INVALID_ARG,
    KafkaError._UNKNOWN_TOPIC,
    KafkaError.UNKNOWN_TOPIC_OR_PART,
}


def kafka_error(what: str, error: KafkaError) -> StoreError | ConfigError:
    """The featrec error for a librdkafka error met while doing ``what``."""
    message = f"{what}: Kafka {error.name()}: {error.str()}"
    code = error.code()
    if code in _UNAVAILABLE:
        return StoreUnavailable(message)
    if code in _CONFIG:
        return ConfigError(message + " (check FEATREC_KAFKA_* and that the topic exists)")
    return StoreError(message)


@contextmanager
def translated_kafka(what: str) -> Iterator[None]:
    """Raise featrec's error for a ``KafkaException`` raised inside."""
    try:
        yield
    except KafkaException as exc:
        error = exc.args[0] if exc.args and isinstance(exc.args[0], KafkaError) else None
        if error is None:
            raise StoreError(f"{what}: Kafka: {exc}") from exc
        raise kafka_error(what, error) from exc
