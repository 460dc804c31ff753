"""The process's Redis clients: one async client per event loop, one sync client.

REDIS_URL names one Redis (`redis://`, `rediss://`, `unix://`), a Redis Cluster
(`redis+cluster://host:port,host:port/`, any of its nodes; the others are found
from them) or a master behind Sentinel (`redis+sentinel://host:port,host:port/MASTER[/DB]`,
the sentinels' addresses). The clients hide which: a cluster client routes each
command to the node serving its key's hash slot, a Sentinel client asks the
sentinels for the master and asks again after a failover. Keys that one Lua
script or one MULTI touches share a hash tag (gateway_project/lib/redis_keys.py).

The async pool blocks for a free connection instead of failing: under a burst
the hot path waits a moment rather than reading a full pool as an outage. Its
connections pack commands with hiredis's C encoder, as redis-py's sync client
already does: the asyncio client packs them in Python, one call per argument,
which cost about 50 us of the admission script's 39 arguments on every request.
"""

import asyncio
import random
import weakref
from dataclasses import dataclass
from functools import cache
from urllib.parse import unquote, urlsplit

import hiredis
import redis
import redis.asyncio as aioredis
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from redis.asyncio.cluster import ClusterNode
from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster
from redis.asyncio.retry import Retry as AsyncRetry
from redis.asyncio.sentinel import Sentinel as AsyncSentinel
from redis.backoff import NoBackoff
from redis.cluster import ClusterNode as SyncClusterNode
from redis.cluster import RedisCluster
from redis.maint_notifications import MaintNotificationsConfig
from redis.retry import Retry
from redis.sentinel import Sentinel

from .settings_cache import conf

# What a Redis command raises when Redis, not the caller, failed: redis-py's errors, the socket's
# (timeouts included), and the RuntimeError uvloop raises for a connection whose transport a
# dying node closed under it (a killed cluster master's, mid-call). Each caller then takes its
# fallback, as for a connection error, rather than answering 500.
redis_failures = (redis.RedisError, OSError, RuntimeError)

# Keyed weakly by event loop: a client must not outlive, or cross, its loop.
_async_clients: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()

SINGLE, CLUSTER, SENTINEL = "single", "cluster", "sentinel"


@dataclass(frozen=True)
class Topology:
    """What REDIS_URL names: the kind, the addresses (cluster nodes or sentinels) and, for
    Sentinel, the master's name and database; credentials and TLS for every connection."""

    kind: str
    url: str
    nodes: tuple[tuple[str, int], ...] = ()
    master: str = ""
    db: int = 0
    username: str | None = None
    password: str | None = None
    tls: bool = False

    def connection_kwargs(self) -> dict:
        kwargs = {"username": self.username, "password": self.password}
        return {**kwargs, "ssl": True} if self.tls else kwargs


def parse(url: str) -> Topology:
    """Read a REDIS_URL; raise ImproperlyConfigured, naming the form, when it cannot be read."""
    scheme = url.split("://", 1)[0].lower()
    if scheme not in ("redis+cluster", "rediss+cluster", "redis+sentinel", "rediss+sentinel"):
        return Topology(SINGLE, url, db=int(redis.connection.parse_url(url).get("db") or 0) if url else 0)
    parts = urlsplit(url)
    auth, _, hosts = parts.netloc.rpartition("@")
    username, _, password = auth.partition(":") if auth else ("", "", "")
    nodes = []
    for host in filter(None, hosts.split(",")):
        name, _, port = host.rpartition(":") if ":" in host else (host, "", "")
        if not name or (port and not port.isdigit()):
            raise ImproperlyConfigured(f"REDIS_URL: {host!r} is not host:port")
        nodes.append((name, int(port or (26379 if "sentinel" in scheme else 6379))))
    if not nodes:
        raise ImproperlyConfigured("REDIS_URL: name at least one host:port")
    path = [p for p in parts.path.split("/") if p]
    kind = CLUSTER if "cluster" in scheme else SENTINEL
    if kind == SENTINEL and (not path or len(path) > 2 or (len(path) == 2 and not path[1].isdigit())):
        raise ImproperlyConfigured("REDIS_URL: redis+sentinel://host:port[,host:port...]/MASTER_NAME[/DB]")
    if kind == CLUSTER and path:
        raise ImproperlyConfigured("REDIS_URL: a cluster has one database; redis+cluster://host:port[,host:port...]")
    return Topology(kind, url, tuple(nodes), master=path[0] if kind == SENTINEL else "",
                    db=int(path[1]) if kind == SENTINEL and len(path) == 2 else 0,
                    username=unquote(username) or None, password=unquote(password) or None,
                    tls=scheme.startswith("rediss"))


def topology() -> Topology:
    return _parsed(conf.REDIS_URL)


@cache
def _parsed(url: str) -> Topology:
    return parse(url)


def async_redis() -> aioredis.Redis | AsyncRedisCluster:
    loop = asyncio.get_running_loop()
    client = _async_clients.get(loop)
    if client is None:
        client = _async_clients[loop] = _new_async(topology())
    return client


def _new_async(top: Topology):
    timeouts = {"socket_timeout": 5, "socket_connect_timeout": 2}
    if top.kind == CLUSTER:
        # One retry: after a failover the first command meets the old master, and the retry finds the
        # new one; more would make each call to a hanging node wait out several timeouts.
        # redis-py's cluster pool cannot wait for a free connection (it raises MaxConnectionsError): it
        # may open ten times REDIS_POOL_SIZE per node, opened only as calls in flight need them.
        packed = packed_by_hiredis(aioredis.Connection)
        client = AsyncRedisCluster(
            startup_nodes=[ClusterNode(host, port, connection_class=packed) for host, port in top.nodes],
            max_connections=10 * settings.REDIS_POOL_SIZE, require_full_coverage=False,
            retry=AsyncRetry(NoBackoff(), 1), maint_notifications_config=MaintNotificationsConfig(enabled=False),
            **timeouts, **top.connection_kwargs())
        # The nodes found from the startup ones are made with these (redis-py takes no connection class).
        client.nodes_manager.connection_kwargs["connection_class"] = packed
        return client
    if top.kind == SENTINEL:
        sentinel = AsyncSentinel(top.nodes, sentinel_kwargs={**timeouts, "password": top.password}, **timeouts,
                                 **top.connection_kwargs())
        client = sentinel.master_for(top.master, db=top.db, max_connections=settings.REDIS_POOL_SIZE)
        client.connection_pool.connection_class = packed_by_hiredis(client.connection_pool.connection_class)
        return client
    pool = aioredis.BlockingConnectionPool.from_url(
        top.url, max_connections=settings.REDIS_POOL_SIZE, timeout=5, **timeouts)
    pool.connection_class = packed_by_hiredis(pool.connection_class)
    return aioredis.Redis(connection_pool=pool)


@cache
def packed_by_hiredis(connection_class: type) -> type:
    """`connection_class` (plain, TLS or Unix socket) with commands packed by hiredis. What hiredis
    does not take (None, a bool, a bytearray) and a command name with a space in it ("CONFIG GET",
    split by redis-py) go to redis-py's own packing, which raises its usual DataError."""

    class Packed(connection_class):
        async def send_packed_command(self, command, check_health: bool = True) -> None:
            # redis-py bounds the write with asyncio.wait_for, which on Python 3.11 runs it as a task
            # of its own, sent a loop turn later: two tasks per call (admission, settlement). The same
            # bound with asyncio.timeout, and redis-py's own method for everything else.
            timeout = self.socket_timeout
            if (not timeout or not self.is_connected or isinstance(command, str)
                    or (check_health and self.health_check_interval)):
                await super().send_packed_command(command, check_health)
                return
            try:
                async with asyncio.timeout(timeout):
                    self._writer.writelines([command] if isinstance(command, bytes) else command)
                    await self._writer.drain()
            except TimeoutError:
                await self.disconnect(nowait=True)
                raise redis.exceptions.TimeoutError("Timeout writing to socket") from None
            except OSError as e:
                await self.disconnect(nowait=True)
                raise redis.exceptions.ConnectionError(f"Error while writing to socket. {e.args}.") from e
            except BaseException:
                await self.disconnect(nowait=True)
                raise

        def pack_command(self, *args):
            name = args[0]
            if (" " if isinstance(name, str) else b" ") not in name:
                try:
                    return [hiredis.pack_command(args)]
                except TypeError:
                    pass
            return super().pack_command(*args)

    Packed.__name__ = Packed.__qualname__ = f"Hiredis{connection_class.__name__}"
    return Packed


def sync_redis() -> redis.Redis | RedisCluster:
    return _sync_for(settings.REDIS_URL)


@cache
def _sync_for(url: str) -> redis.Redis | RedisCluster:
    return new_sync(_parsed(url), timeout=5)


def new_sync(top: Topology, timeout: float, connect_timeout: float | None = None) -> redis.Redis | RedisCluster:
    """A synchronous client of its own (the health probe's, with its short timeouts)."""
    timeouts = {"socket_timeout": timeout, "socket_connect_timeout": connect_timeout or min(timeout, 2)}
    if top.kind == CLUSTER:
        return RedisCluster(startup_nodes=[SyncClusterNode(h, p) for h, p in top.nodes],
                            require_full_coverage=False, retry=Retry(NoBackoff(), 1),
                            **timeouts, **top.connection_kwargs())
    if top.kind == SENTINEL:
        sentinel = Sentinel(top.nodes, sentinel_kwargs={**timeouts, "password": top.password}, **timeouts,
                            **top.connection_kwargs())
        return sentinel.master_for(top.master, db=top.db)
    return redis.Redis.from_url(top.url, **timeouts)


def pubsub_client() -> aioredis.Redis:
    """An async client for SUBSCRIBE (config_cache.listen). A cluster delivers every PUBLISH to
    every node, so a subscriber needs only one node: any one, a different one after each loss."""
    top = topology()
    if top.kind == CLUSTER:
        host, port = random.choice(top.nodes)  # noqa: S311  # nosec B311: spreading subscribers, not security
        return aioredis.Redis(host=host, port=port, **top.connection_kwargs())
    if top.kind == SENTINEL:
        sentinel = AsyncSentinel(top.nodes, sentinel_kwargs={"socket_timeout": 5, "password": top.password},
                                 **top.connection_kwargs())
        return sentinel.master_for(top.master, db=top.db)
    return aioredis.Redis.from_url(top.url)


def channel(name: str) -> str:
    """A pub/sub channel name for this deployment's Redis database.

    Keys live in the database of REDIS_URL, but pub/sub channels are shared by
    every database of a server: two gateways on one Redis server (staging on
    db 1, production on db 0, say) would otherwise hear each other's breaker
    and configuration news.
    """
    return f"gw:{topology().db if settings.REDIS_URL else 0}:{name}"
