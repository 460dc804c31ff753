"""How a configuration change reaches the caches of every gateway process.

The hot path serves keys and the routing table from in-process caches. Each
cache has a name ("keys", "routes") and a generation number; a change bumps
the generation after the transaction commits: in this process at once, and in
every other process through Redis pub/sub. A cache whose generation moved
reloads on its next use. Caches also expire after GATEWAY_CONFIG_CACHE_SECONDS,
which bounds staleness if a message is ever missed.
"""

import asyncio
import logging
import time
import weakref
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass

import redis
from django.conf import settings
from django.db import DatabaseError, transaction

from gateway_project.lib.orm_thread import run_orm
from gateway_project.lib.redis_pool import channel, pubsub_client, redis_failures, sync_redis

from .settings_cache import conf

log = logging.getLogger(__name__)

CHANNEL = channel("config-changed")

_generations: dict[str, int] = defaultdict(int)


@dataclass(frozen=True, slots=True)
class Subscription:
    """Another pub/sub channel the listener follows for an app: `on_message` gets each
    message's text; `resync` (sync, run in a thread) catches up on what was missed
    while not subscribed."""

    on_message: Callable[[str], None]
    resync: Callable[[], None] | None = None


_subscriptions: dict[str, Subscription] = {}


def subscribe(channel_name: str, on_message: Callable[[str], None], resync: Callable[[], None] | None = None) -> None:
    """Follow `channel_name` in every gateway process's listener (the app that owns it registers it)."""
    _subscriptions[channel_name] = Subscription(on_message, resync)


def generation(name: str) -> int:
    return _generations[name]


def bump(name: str) -> None:
    _generations[name] += 1


def _announce(name: str) -> None:
    bump(name)
    if settings.REDIS_URL:
        try:
            sync_redis().publish(CHANNEL, name)
        except redis.RedisError:
            # Other processes fall back to their cache expiry.
            log.warning("could not announce a %s change through Redis", name)


class Reloaded:
    """A configuration table loaded from the database by `load` (sync, ORM) and kept
    in this process: reloaded on use once its generation (`name`) moved or it is
    GATEWAY_CONFIG_CACHE_SECONDS old, one load at a time. While the database is
    away, the table it last gave keeps serving, asked for again each second (a
    table never loaded has nothing to serve: the DatabaseError propagates)."""

    def __init__(self, name: str, load, what: str) -> None:
        self.name, self.load, self.what = name, load, what
        self.value = None
        self.generation = -1
        self.loaded_at = 0.0
        # One lock per event loop: an asyncio lock must not cross loops (tests run several).
        self.locks: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()

    def _fresh(self, generation: int) -> bool:
        return (self.value is not None and generation == self.generation
                and time.monotonic() - self.loaded_at < conf.GATEWAY_CONFIG_CACHE_SECONDS)

    async def get(self):
        if self._fresh(_generations[self.name]):
            return self.value
        loop = asyncio.get_running_loop()
        if (lock := self.locks.get(loop)) is None:
            lock = self.locks[loop] = asyncio.Lock()
        async with lock:
            generation = _generations[self.name]
            if not self._fresh(generation):
                try:
                    self.value = await run_orm(self.load)
                    self.loaded_at = time.monotonic()
                except DatabaseError:
                    if self.value is None:
                        raise
                    log.warning("%s not reloaded: database unreachable; keeping the cached ones", self.what)
                    self.loaded_at = time.monotonic() - settings.GATEWAY_CONFIG_CACHE_SECONDS + 1
                self.generation = generation
        return self.value


def changed(name: str) -> None:
    """Call from a signal handler when cached configuration changes."""
    transaction.on_commit(lambda: _announce(name))


async def listen(stop: asyncio.Event) -> None:
    """Apply changes announced by other processes until stop is set (on a cluster, from any one
    node: every node hears every PUBLISH; after a loss, from another)."""
    while not stop.is_set():
        client = pubsub_client()
        try:
            async with client.pubsub() as pubsub:
                await pubsub.subscribe(CHANNEL, *_subscriptions)
                # Anything may have changed while we were not subscribed.
                for name in list(_generations):
                    bump(name)
                for subscription in _subscriptions.values():
                    if subscription.resync is not None:
                        await asyncio.to_thread(subscription.resync)
                while not stop.is_set():
                    message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
                    if message and message["type"] == "message":
                        name, data = message["channel"].decode(), message["data"].decode()
                        if (subscription := _subscriptions.get(name)) is not None:
                            subscription.on_message(data)
                        else:
                            bump(data)
        except redis_failures:
            log.warning("config change listener lost Redis; retrying")
            await asyncio.sleep(1.0)
        finally:
            await client.aclose()
