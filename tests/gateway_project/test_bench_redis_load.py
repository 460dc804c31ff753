"""bench/redis_load.py's saturation mode replays the exact commands of recorded calls: its MONITOR
parser gives back the arguments as sent, and a replayed call is admitted and settled like a real one
(docs/scaling.md, "Redis: three figures, and what each means")."""

import os
import time

import redis

from bench import redis_load
from tests.redis_servers import Node, OwnCluster, free_ports
from usage import limit_scripts


def test_monitor_lines_parse_back_to_the_arguments_sent(tmp_path):
    node = Node(free_ports(1)[0], tmp_path)
    node.start()
    try:
        client = redis.Redis(port=node.port)
        watcher = client.connection_pool.get_connection()
        watcher.send_command("MONITOR")
        watcher.read_response()
        sent = [b"SET", b'a "quoted" key\\with\nnewline', bytes(range(256)) + b"\r\n\t\a\b end"]
        client.execute_command(*sent)
        seen = []
        while not seen or seen[-1][0] != b"SET":  # the client's connection handshake comes first
            seen.append(redis_load._unrepr(watcher.read_response().split(b"] ", 1)[1]))
        assert seen[-1] == sent
        watcher.disconnect()
    finally:
        node.kill()


def _recorded_call(client: redis.Redis) -> list:
    """One call as MONITOR records it: a tenant limit on requests (above what any machine replays in a
    second, so that none is refused) and a budget, a key limit on tokens."""
    admit, settle = client.script_load(limit_scripts.ADMIT), client.script_load(limit_scripts.SETTLE)
    now, rid = int(time.time() * 1000), os.urandom(16).hex().encode()
    event = b'{"request_id":"x","tenant_id":7}'
    period = [b"1796342400000", b"1799020800000"]
    return [[b"EVALSHA", admit.encode(), b"1", b"gw:{g7}:resv:exp", b"%d" % now, rid, b"600000", b"2",
             b"300000", b"1", b"5", b"1000000", b"0", b"0", b"0", b"1000000", *period, b"26", b"40", b"4096",
             b"3000", b"6", b"0", b"100000", b"0", b"0", b"0", b"0", b"0", b"26", b"40", b"4096", b"3000",
             b"gw:{g7}:inflight:w1", rid, event],
            [b"EVALSHA", settle.encode(), b"2", b"gw:{g7}:resv:exp", b"gw:{g7}:usage", b"held", b"25", b"41",
             event, b"gw:{g7}:inflight:w1", rid]]


def _assert_all_settled(clients: list[redis.Redis], result: dict) -> None:
    assert result["calls"] > 0 and result["refused"] == 0
    assert result["commands"]["evalsha"] == 2  # one admission, one settlement a call
    for client in clients:
        for tag in range(4):
            assert client.zcard(f"gw:{{r{tag}}}:resv:exp") == 0  # every reservation settled
            assert client.hlen(f"gw:{{r{tag}}}:inflight:w1") == 0  # every in-flight entry deleted
    periods = [(c, k) for c in clients for k in c.scan_iter("gw:*:lim:*:p:*")]
    spent = sum(int(c.hget(key, "cost")) for c, key in periods)
    assert spent == 41 * result["calls"]  # each settled at its real cost, on its own tenant's budget
    assert len(periods) == 8


def test_a_replayed_call_is_admitted_and_settled_for_every_tenant(tmp_path):
    node = Node(free_ports(1)[0], tmp_path)
    node.start()
    try:
        client = redis.Redis(port=node.port)
        result = redis_load.saturate([client], [_recorded_call(client)], seconds=1, processes=1, connections=2,
                                     depth=4, tenants=8, tags=4)
        _assert_all_settled([client], result)
    finally:
        node.kill()


def test_the_replay_on_a_cluster_sends_each_master_the_tenants_of_its_slots(tmp_path):
    cluster = OwnCluster(tmp_path)
    try:
        clients = [redis.Redis(port=n.port) for n in cluster.nodes]
        result = redis_load.saturate(clients, [_recorded_call(clients[0])], seconds=1, processes=1, connections=3,
                                     depth=4, tenants=8, tags=4)
        _assert_all_settled([redis.RedisCluster(host="127.0.0.1", port=cluster.nodes[0].port)], result)
        # The four shard tags hash to slots on more than one master, and each master's own were replayed there.
        assert sum(1 for c in clients if c.dbsize()) >= 2
    finally:
        cluster.stop()
