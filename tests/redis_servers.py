"""Redis topologies of a test's (or a bench run's) own, on loopback ports picked at random: a
three-master cluster and a master with a replica behind three sentinels, each to kill, pause and
start again. Every server keeps an append-only file, as production's must (the usage buffer
lives there), and is stopped by `stop()`."""

import random
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import redis

REDIS_SERVER = shutil.which("redis-server")
REDIS_CLI = shutil.which("redis-cli")


def _free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_ports(count: int, bus: bool = False) -> list[int]:
    """`count` free loopback ports in 20000-50000 (and, with `bus`, each one's cluster bus port, +10000)."""
    ports: list[int] = []
    while len(ports) < count:
        port = random.randint(20000, 50000)
        if port not in ports and _free(port) and (not bus or _free(port + 10000)):
            ports.append(port)
    return ports


def _answers(port: int) -> bool:
    try:
        return redis.Redis(port=port, socket_timeout=1).ping()
    except (redis.RedisError, OSError):
        return False


def _wait(check, timeout: float = 30.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(0.1)


class Node:
    """One redis-server process with its own directory and arguments."""

    def __init__(self, port: int, directory: Path, *args: str) -> None:
        self.port, self.directory, self.args = port, directory, args
        self.directory.mkdir(parents=True, exist_ok=True)
        self.proc: subprocess.Popen | None = None
        self.paused = False

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [REDIS_SERVER, *self.args, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "yes", "--dir", str(self.directory)],
            stdout=open(self.directory / "log", "ab"), stderr=subprocess.STDOUT)
        _wait(lambda: _answers(self.port), what=f"redis on {self.port}")

    def kill(self) -> None:
        """SIGKILL: the process dies at once, as on a crash (what it acknowledged is in its AOF)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def pause(self) -> None:
        self.proc.send_signal(signal.SIGSTOP)
        self.paused = True

    def resume(self) -> None:
        self.proc.send_signal(signal.SIGCONT)
        self.paused = False

    def stop(self) -> None:
        if self.paused:
            self.resume()
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.kill()


class OwnCluster:
    """A Redis Cluster of `masters` masters (no replicas), slots split equally, as
    `redis-cli --cluster create` makes it. A master that is down leaves the others serving
    (cluster-require-full-coverage no); started again, it serves its slots from its AOF, which
    every write reaches before it is acknowledged (appendfsync always: under everysec a busy disk
    lets Redis postpone the write by up to 2 s, and a master killed then loses what it had
    acknowledged, docs/scaling.md)."""

    def __init__(self, directory: Path, masters: int = 3, node_timeout_ms: int = 2000) -> None:
        self.nodes = [Node(port, directory / str(port), "--cluster-enabled", "yes",
                           "--cluster-config-file", "nodes.conf", "--cluster-node-timeout", str(node_timeout_ms),
                           "--cluster-require-full-coverage", "no", "--appendfsync", "always")
                      for port in free_ports(masters, bus=True)]
        for node in self.nodes:
            node.start()
        subprocess.run([REDIS_CLI, "--cluster", "create", *(f"127.0.0.1:{n.port}" for n in self.nodes),
                        "--cluster-replicas", "0", "--cluster-yes"], check=True, capture_output=True, timeout=60)
        self.wait_ok()

    @property
    def url(self) -> str:
        return "redis+cluster://" + ",".join(f"127.0.0.1:{n.port}" for n in self.nodes)

    def wait_ok(self, timeout: float = 30.0) -> None:
        def ok() -> bool:
            try:
                return all(redis.Redis(port=n.port, socket_timeout=1).execute_command("CLUSTER INFO")
                           .get("cluster_state") == "ok" for n in self.nodes)
            except (redis.RedisError, OSError):
                return False

        _wait(ok, timeout, "the cluster's state to be ok")

    def node_of(self, key: str) -> Node:
        """The master that serves `key`'s slot (by the cluster's own slot map)."""
        slot = redis.Redis(port=self.nodes[0].port).execute_command("CLUSTER KEYSLOT", key)
        for start, end, (_, port, *_), *_ in redis.Redis(port=self.nodes[0].port).execute_command("CLUSTER SLOTS"):
            if start <= slot <= end:
                return next(n for n in self.nodes if n.port == port)
        raise LookupError(key)

    def client(self) -> redis.RedisCluster:
        return redis.RedisCluster(host="127.0.0.1", port=self.nodes[0].port)

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()


class OwnSentinel:
    """A master, one replica and three sentinels watching them as MASTER_NAME (quorum 2, a
    master judged down after `down_after_ms`)."""

    MASTER_NAME = "gw"

    def __init__(self, directory: Path, down_after_ms: int = 1000) -> None:
        master, replica, *sentinels = free_ports(5)
        self.master = Node(master, directory / "master", "--appendfsync", "everysec")
        self.replica = Node(replica, directory / "replica", "--appendfsync", "everysec",
                            "--replicaof", "127.0.0.1", str(master))
        self.master.start()
        self.replica.start()
        self.sentinels = []
        for port in sentinels:
            config = directory / f"sentinel-{port}" / "sentinel.conf"
            config.parent.mkdir(parents=True)
            config.write_text(f"sentinel monitor {self.MASTER_NAME} 127.0.0.1 {master} 2\n"
                              f"sentinel down-after-milliseconds {self.MASTER_NAME} {down_after_ms}\n"
                              f"sentinel failover-timeout {self.MASTER_NAME} 10000\n")
            node = Node(port, config.parent, str(config), "--sentinel")
            node.args = (str(config), "--sentinel")  # a sentinel keeps no AOF
            self.sentinels.append(node)
            node.proc = subprocess.Popen([REDIS_SERVER, str(config), "--sentinel", "--port", str(port),
                                          "--bind", "127.0.0.1"], stdout=open(config.parent / "log", "ab"),
                                         stderr=subprocess.STDOUT)
        for node in self.sentinels:
            _wait(lambda node=node: _answers(node.port), what="a sentinel")
        _wait(lambda: self.current_master() == master and self._replica_known(), what="sentinels to see the replica")

    @property
    def url(self) -> str:
        return "redis+sentinel://" + ",".join(f"127.0.0.1:{n.port}" for n in self.sentinels) + f"/{self.MASTER_NAME}/0"

    def _replica_known(self) -> bool:
        try:
            replicas = redis.Redis(port=self.sentinels[0].port).sentinel_slaves(self.MASTER_NAME)
        except (redis.RedisError, OSError):
            return False
        return any(r["port"] == self.replica.port and "s_down" not in r["flags"] for r in replicas)

    def current_master(self) -> int | None:
        """The master's port as the sentinels now name it."""
        for node in self.sentinels:
            try:
                _, port = redis.Redis(port=node.port, socket_timeout=1).sentinel_get_master_addr_by_name(
                    self.MASTER_NAME)
                return int(port)
            except (redis.RedisError, OSError, TypeError):
                continue
        return None

    def stop(self) -> None:
        for node in [*self.sentinels, self.replica, self.master]:
            node.stop()
