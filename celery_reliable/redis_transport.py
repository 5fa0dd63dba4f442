"""A kombu Redis transport that dead-letters raw items instead of stopping the worker.

kombu's Redis transport decodes each item it pops from a queue list before Celery sees
it. An item that is not a kombu message envelope (bytes that are not JSON, JSON that is
not an object, an object without ``properties``...) raises there: the worker logs
"Unrecoverable error" and stops, and the item, already popped, is gone.

This transport is kombu's, with one change: an item that cannot be read as an envelope
is dead-lettered (reason ``undeserializable``, the raw bytes as its body, the queue
name) and skipped, and the worker keeps consuming. If the dead-letter store cannot be
reached, the item is pushed onto ``<queue>.unreadable`` in the broker's Redis (an
error is logged); move it back with ``LMOVE <queue>.unreadable <queue> RIGHT LEFT`` once
the store is back. Valid messages take exactly kombu's path.

Turn it on with one setting (the broker URL stays ``redis://...``)::

    app.conf.broker_transport = "celery_reliable.redis_transport:Transport"

Letters are written with the settings of the current Celery app (the worker's app), so
``reliable_database_url`` must be set there.
"""

from __future__ import annotations

import logging
from queue import Empty
from types import SimpleNamespace
from typing import Any

from kombu.transport import redis as kombu_redis
from kombu.utils.encoding import bytes_to_str
from kombu.utils.json import loads

from .errors import ReliableError

logger = logging.getLogger("celery_reliable")

#: Suffix of the broker list that keeps items the dead-letter store could not take.
UNREADABLE_SUFFIX = ".unreadable"

#: Longest part of a raw item written to the log when it could be kept nowhere.
LOG_LIMIT = 65_536


class NotAnEnvelope(ReliableError, ValueError):
    """A broker item is JSON, but not a kombu message envelope this transport can deliver.

    Attributes:
        reason: what is wrong with it.
    """

    def __init__(self, reason: str) -> None:
        self.reason = reason
        self.message = f"not a kombu message envelope: {reason}"
        super().__init__(reason)


def _optional_str(value: Any) -> bool:
    return value is None or isinstance(value, str)


def check_envelope(payload: Any, channel: Any) -> dict[str, Any]:
    """Return ``payload`` if kombu can deliver, acknowledge and restore it as a message.

    The checks are what :class:`kombu.transport.virtual.Message` and the Redis ack
    emulation need; what Celery does with the body is left to Celery (and to the
    dead-lettering of undecodable bodies in :mod:`celery_reliable.malformed`).

    Raises:
        NotAnEnvelope: saying which part is missing or of the wrong type.
    """
    if not isinstance(payload, dict):
        raise NotAnEnvelope(f"a JSON {type(payload).__name__}, not an object")
    props = payload.get("properties")
    if not isinstance(props, dict):
        raise NotAnEnvelope("'properties' is missing or not an object")
    tag = props.get("delivery_tag")
    if not isinstance(tag, (str, int)) or isinstance(tag, bool):
        raise NotAnEnvelope("'properties.delivery_tag' is missing or not a string")
    info = props.get("delivery_info")
    if not isinstance(info, dict) or not isinstance(info.get("exchange"), str):
        raise NotAnEnvelope("'properties.delivery_info.exchange' is missing or not a string")
    if not isinstance(info.get("routing_key"), str):
        raise NotAnEnvelope("'properties.delivery_info.routing_key' is missing or not a string")
    if payload.get("headers") is not None and not isinstance(payload["headers"], dict):
        raise NotAnEnvelope("'headers' is not an object")
    for name in ("content-type", "content-encoding"):
        if not _optional_str(payload.get(name)):
            raise NotAnEnvelope(f"{name!r} is not a string")
    body, encoding = payload.get("body"), props.get("body_encoding")
    if body:
        try:
            channel.decode_body(body, encoding)
        except Exception as exc:
            raise NotAnEnvelope(f"its body cannot be decoded as {encoding!r}: {exc!r}") from exc
    return payload


def decode_item(item: bytes | str, channel: Any) -> dict[str, Any]:
    """The envelope of a raw broker item, decoded exactly as kombu does.

    Raises:
        ValueError: the item is not JSON (:class:`json.JSONDecodeError`), or not an
            envelope (:class:`NotAnEnvelope`).
    """
    return check_envelope(loads(bytes_to_str(item)), channel)


def _headers(item: bytes | str) -> dict[str, Any] | None:
    """The headers of an item that is a JSON object with a ``headers`` object, for the letter."""
    try:
        payload = loads(bytes_to_str(item))
    except Exception:
        return None
    headers = payload.get("headers") if isinstance(payload, dict) else None
    return headers if isinstance(headers, dict) else None


class Channel(kombu_redis.Channel):
    """kombu's Redis channel; unreadable items are dead-lettered and skipped.

    Only the two places that decode popped items are overridden: ``_brpop_read`` (the
    worker's event loop) and ``_get`` (polling and ``basic_get``). Their bodies follow
    kombu 5.7's, line for line, around the decoding.
    """

    def _brpop_read(self, **options: Any) -> bool:
        try:
            try:
                dest__item = self.client.parse_response(self.client.connection, "BRPOP", **options)
            except self.connection_errors:
                # if there's a ConnectionError, disconnect so the next
                # iteration will reconnect automatically.
                self.client.connection.disconnect()
                raise
            if not dest__item:
                raise Empty()
            dest, item = dest__item
            dest = bytes_to_str(dest).rsplit(self.sep, 1)[0]
            self._queue_cycle.rotate(dest)
            payload = self._envelope(item, dest)
            if payload is not None:
                self.connection._deliver(payload, dest)
            return True
        finally:
            self._in_poll = None  # type: ignore[assignment]  # as kombu does
            flush = getattr(self, "_flush_brpop_reauth", None)  # kombu >= 5.7
            if flush is not None:
                flush()

    def _get(self, queue: str, timeout: float | None = None) -> dict[str, Any]:
        update_expire = getattr(self, "_maybe_update_queues_expire", None)  # kombu >= 5.6
        with self.conn_or_acquire() as client:
            for pri in self.priority_steps:
                while True:
                    item = client.rpop(self._q_for_pri(queue, pri))
                    if not item:
                        break
                    if update_expire is not None:
                        update_expire(client, queue)
                    payload = self._envelope(item, queue)
                    if payload is not None:
                        return payload
            if update_expire is not None:
                update_expire(client, queue)
            raise Empty()

    def _envelope(self, item: bytes, queue: str) -> dict[str, Any] | None:
        """The item's envelope; ``None`` after dead-lettering (or keeping) an unreadable item."""
        try:
            return decode_item(item, self)
        except Exception as exc:
            self._unreadable(item, queue, exc)
            return None

    def _unreadable(self, item: bytes, queue: str, exc: BaseException) -> None:
        """Dead-letter an unreadable item; if that fails, push it onto ``<queue>.unreadable``."""
        from .malformed import letter_of

        raw = SimpleNamespace(headers=_headers(item), delivery_info={"routing_key": queue}, body=item)
        try:
            from celery import current_app

            from .deadletter import DeadLetterStore
            from .runtime import runtime

            letter = letter_of(raw, "undeserializable", exc)
            letter_id, created = DeadLetterStore(runtime(current_app._get_current_object()).engine()).add(letter)
        except Exception as store_exc:
            self._keep(item, queue, exc, store_exc)
            return
        if created:
            logger.error(
                "dead-lettered an unreadable item from queue %r as undeserializable (letter %d): %r",
                queue,
                letter_id,
                exc,
            )

    def _keep(self, item: bytes, queue: str, exc: BaseException, store_exc: BaseException) -> None:
        keep = f"{queue}{UNREADABLE_SUFFIX}"
        try:
            with self.conn_or_acquire() as client:
                client.lpush(keep, item)
        except Exception as push_exc:
            logger.error(
                "LOST an unreadable item from queue %r: the dead-letter store failed (%r) and so did "
                "pushing it onto %r (%r); its first %d bytes: %r",
                queue,
                store_exc,
                keep,
                push_exc,
                LOG_LIMIT,
                bytes(item[:LOG_LIMIT]),
            )
            raise
        logger.error(
            "could not dead-letter an unreadable item from queue %r (%r: %r); kept it in the broker list %r",
            queue,
            exc,
            store_exc,
            keep,
        )


class Transport(kombu_redis.Transport):
    """kombu's Redis transport with :class:`Channel`: ``celery_reliable.redis_transport:Transport``."""

    Channel = Channel
