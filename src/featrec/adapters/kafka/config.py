"""librdkafka configuration from :class:`~featrec.settings.KafkaSettings`.

Security settings (TLS, SASL) are passed through as librdkafka properties; they come from the
environment only and are never logged (:func:`describe` names the brokers, not the secrets).
"""

from __future__ import annotations

from typing import Final

from featrec.settings import KafkaSettings

#: Java clients' default partitioner (murmur2 of the key): a session lands on the same
#: partition whether featrec or a shop's own Java/Go producer writes it.
PARTITIONER: Final = "murmur2_random"


def client_config(kafka: KafkaSettings) -> dict[str, str]:
    """Properties every featrec client (producer, admin, bytewax's consumer) shares."""
    config = {
        "bootstrap.servers": kafka.brokers,
        "security.protocol": kafka.security_protocol,
    }
    if kafka.sasl_mechanism is not None:
        config["sasl.mechanism"] = kafka.sasl_mechanism
    if kafka.sasl_username is not None:
        config["sasl.username"] = kafka.sasl_username
    if kafka.sasl_password is not None:
        config["sasl.password"] = kafka.sasl_password.get_secret_value()
    if kafka.ssl_ca_location is not None:
        config["ssl.ca.location"] = str(kafka.ssl_ca_location)
    return config


def producer_config(kafka: KafkaSettings) -> dict[str, str]:
    """A producer's properties: keyed partitioning as Java's, idempotent, small linger."""
    return {
        **client_config(kafka),
        "partitioner": PARTITIONER,
        "enable.idempotence": "true",
        "linger.ms": "5",
    }


def brokers(kafka: KafkaSettings) -> list[str]:
    """The bootstrap brokers as a list (bytewax's ``KafkaSource`` takes a list)."""
    return [b.strip() for b in kafka.brokers.split(",") if b.strip()]


def describe(kafka: KafkaSettings) -> str:
    """Where the bus is, for messages and logs (no credentials)."""
    return f"kafka://{kafka.brokers}/{kafka.topic}"
