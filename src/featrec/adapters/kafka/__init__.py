"""Kafka as featrec's event bus (confluent-kafka): client configuration, topics, producing.

Reading is the dataflows' business (bytewax's own ``KafkaSource``, offsets kept in bytewax
recovery: see ``dataflows/kafka_source.py``); this package produces events and dead letters
and creates topics. Wire format: value = the event as featrec JSON (the same text as a Redis
stream entry's ``e`` field), key = the session id, so a session stays on one partition.
"""
