"""A real Redis for tests: ``REDIS_URL`` if set, else a private ``redis-server``; and
private Redis Clusters (three masters) and Sentinel setups (a master, a replica and a
sentinel), all on loopback.

In CI (``CI=true``) Redis tests must run: a missing Redis fails them, never skips.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Protocol, TypeVar

import pytest
import redis
import redis.asyncio

from tests.process_reaper import die_with_parent

MISSING = ("Redis tests need REDIS_URL or a redis-server binary on PATH "
           "(Debian/Ubuntu: apt-get install redis-server)")
MISSING_CLI = ("Redis Cluster tests need redis-cli on PATH "
               "(Debian/Ubuntu: apt-get install redis-server, which brings redis-tools)")
#: Seconds a cluster or a sentinel setup may take to form (or to fail over).
FORM_TIMEOUT = 20.0
SENTINEL_MASTER = "mymaster"


def require(what: str = MISSING) -> None:
    """Fail in CI, skip elsewhere."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"{what}; in CI these tests must run")
    pytest.skip(what)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RedisServer:
    """One private ``redis-server`` on loopback, without persistence."""

    def __init__(self, directory: Path, port: int | None = None,
                 extra: list[str] | None = None) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            require()
        self.binary = str(binary)
        self.directory = directory
        self.port = port or free_port()
        self.extra = list(extra or [])
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def log(self) -> Path:
        return self.directory / "redis.log"

    def argv(self) -> list[str]:
        return [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                "--appendonly", "no", "--dir", str(self.directory), "--logfile", str(self.log),
                *self.extra]

    def start(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        log = self.log
        # redis-server overwrites its environment, where the process reaper's watchdog
        # looks for it: tie it to pytest instead, for when pytest is SIGKILLed.
        self.proc = subprocess.Popen(
            self.argv(), preexec_fn=die_with_parent(),
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 10.0
        while True:
            # With nothing to load, Redis serves as soon as it listens.
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1.0).close()
                return
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    text = log.read_text() if log.exists() else ""
                    raise RuntimeError(f"redis-server did not start:\n{text[-2000:]}") from None
                time.sleep(0.02)

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class Startable(Protocol):
    def start(self) -> None: ...

    def stop(self) -> None: ...


S = TypeVar("S", bound=Startable)


@contextlib.contextmanager
def running(server: S) -> Iterator[S]:
    """``server`` started, and stopped whatever happens."""
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    url = os.environ.get("REDIS_URL")
    if url:
        yield url
        return
    with running(RedisServer(tmp_path_factory.mktemp("redis"))) as server:
        yield server.url


async def delete_prefix(url: str, prefix: str) -> None:
    """Remove every key under ``prefix`` (SCAN + DEL): tests leave nothing behind.
    ``url`` may be a cluster's (comma-separated) seed nodes: all its nodes are scanned."""
    first = url.split(",")[0]
    client: redis.asyncio.Redis | redis.asyncio.RedisCluster = redis.asyncio.Redis.from_url(first)
    try:
        if int((await client.info("cluster")).get("cluster_enabled", 0)):
            await client.aclose()
            client = redis.asyncio.RedisCluster.from_url(first)
        batch: list[bytes] = []
        async for key in client.scan_iter(match=f"{prefix}*", count=1000):
            batch.append(key)
            if len(batch) >= 500:
                await client.delete(*batch)
                batch.clear()
        if batch:
            await client.delete(*batch)
    finally:
        await client.aclose()


def _wait_for(what: str, check: Callable[[], bool], logs: list[Path]) -> None:
    """Poll ``check`` (the servers offer nothing to wait on) until it holds, for at most
    ``FORM_TIMEOUT`` seconds; then fail with the servers' logs."""
    deadline = time.monotonic() + FORM_TIMEOUT
    while True:
        with contextlib.suppress(redis.exceptions.RedisError, OSError):
            if check():
                return
        if time.monotonic() > deadline:
            tails = "\n".join(f"--- {p}:\n{p.read_text()[-1500:]}" for p in logs if p.exists())
            raise RuntimeError(f"{what} within {FORM_TIMEOUT:g} s\n{tails}")
        time.sleep(0.05)


def _info(port: int, section: str) -> dict[str, Any]:
    client = redis.Redis(host="127.0.0.1", port=port, socket_timeout=2.0)
    try:
        return client.info(section)
    finally:
        client.close()


def cluster_port() -> int:
    """A free port whose cluster bus port (``port + 10000``) is valid and free too."""
    for _ in range(200):
        port = free_port()
        if port + 10000 > 65535:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port + 10000))
            except OSError:
                continue
        return port
    raise RuntimeError("found no free port pair for a cluster node")


class RedisClusterServers:
    """A private Redis Cluster: ``masters`` nodes, no replicas, every slot assigned."""

    def __init__(self, directory: Path, masters: int = 3) -> None:
        cli = shutil.which("redis-cli")
        if cli is None:
            require(MISSING_CLI)
        self.cli = str(cli)
        self.nodes = [RedisServer(directory / f"node-{i}", port=cluster_port(), extra=[
            "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
            "--cluster-node-timeout", "2000"]) for i in range(masters)]

    @property
    def url(self) -> str:
        """The seed list, as the sidecar's URL variable holds it in cluster mode."""
        return ",".join(f"redis://127.0.0.1:{n.port}" for n in self.nodes)

    def start(self) -> None:
        try:
            for node in self.nodes:
                node.start()
            created = subprocess.run(
                [self.cli, "--cluster", "create", *(f"127.0.0.1:{n.port}" for n in self.nodes),
                 "--cluster-replicas", "0", "--cluster-yes"],
                stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=FORM_TIMEOUT)
            if created.returncode != 0:
                raise RuntimeError(f"redis-cli --cluster create failed:\n{created.stdout}"
                                   f"{created.stderr}")
            _wait_for("the cluster did not reach cluster_state:ok",
                      lambda: all(self._state_ok(n.port) for n in self.nodes),
                      [n.log for n in self.nodes])
        except BaseException:
            self.stop()
            raise

    @staticmethod
    def _state_ok(port: int) -> bool:
        client = redis.Redis(host="127.0.0.1", port=port, socket_timeout=2.0)
        try:
            info = client.cluster("info")
        finally:
            client.close()
        return bool(info.get("cluster_state") == "ok")

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()


class SentinelServer(RedisServer):
    """``redis-server sentinel.conf --sentinel`` watching one master under ``SENTINEL_MASTER``,
    quick to call it down (1 s) and to fail over."""

    def __init__(self, directory: Path, master_port: int, password: str = "") -> None:
        super().__init__(directory)
        self.master_port = master_port
        self.password = password

    def argv(self) -> list[str]:
        conf = self.directory / "sentinel.conf"
        lines = [f"port {self.port}", "bind 127.0.0.1", f"dir {self.directory}",
                 f"logfile {self.log}",
                 f"sentinel monitor {SENTINEL_MASTER} 127.0.0.1 {self.master_port} 1",
                 f"sentinel down-after-milliseconds {SENTINEL_MASTER} 1000",
                 f"sentinel failover-timeout {SENTINEL_MASTER} 5000"]
        if self.password:
            lines.append(f"requirepass {self.password}")
        conf.write_text("\n".join(lines) + "\n")  # sentinel rewrites it: a file of its own
        return [self.binary, str(conf), "--sentinel"]

    def client(self) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=2.0,
                           password=self.password or None)


class RedisSentinelSetup:
    """A master, one replica of it and one sentinel that can fail it over."""

    def __init__(self, directory: Path, sentinel_password: str = "") -> None:
        # No delay before a replica's first sync (the default waits 5 s for more replicas).
        self.master = RedisServer(directory / "master",
                                  extra=["--repl-diskless-sync-delay", "0"])
        self.replica = RedisServer(directory / "replica",
                                   extra=["--replicaof", "127.0.0.1", str(self.master.port)])
        self.sentinel = SentinelServer(directory / "sentinel", self.master.port,
                                       sentinel_password)

    @property
    def url(self) -> str:
        """The sentinels, as the sidecar's URL variable holds them in sentinel mode."""
        return f"redis://127.0.0.1:{self.sentinel.port}"

    @property
    def servers(self) -> list[RedisServer]:
        return [self.master, self.replica, self.sentinel]

    def master_port(self) -> int:
        """The port of the master the sentinel names now."""
        client = self.sentinel.client()
        try:
            # redis-py leaves execute_command unannotated.
            _, port = client.execute_command(  # type: ignore[no-untyped-call]
                "SENTINEL GET-MASTER-ADDR-BY-NAME", SENTINEL_MASTER)
        finally:
            client.close()
        return int(port)

    def master_url(self) -> str:
        return f"redis://127.0.0.1:{self.master_port()}/0"

    def start(self) -> None:
        try:
            self.master.start()
            self.replica.start()
            logs = [s.log for s in self.servers]
            _wait_for("the replica did not sync with the master",
                      lambda: _info(self.replica.port, "replication").get(
                          "master_link_status") == "up", logs)
            self.sentinel.start()
            _wait_for("the sentinel did not find the replica", self._replica_promotable, logs)
        except BaseException:
            self.stop()
            raise

    def _replica_promotable(self) -> bool:
        client = self.sentinel.client()
        try:
            replicas = client.sentinel_slaves(SENTINEL_MASTER)
        finally:
            client.close()
        # Promotable: linked, and its INFO fresh (else SENTINEL FAILOVER says NOGOODSLAVE).
        return any(not r["is_disconnected"] and not r["is_sdown"]
                   and r.get("master-link-status") == "ok" and int(r["info-refresh"]) < 5000
                   for r in replicas)

    def failover(self) -> int:
        """Make the sentinel promote the replica; returns the new master's port once the
        sentinel names it and it answers as a master."""
        old = self.master_port()
        client = self.sentinel.client()
        try:
            client.execute_command(  # type: ignore[no-untyped-call]  # unannotated in redis-py
                "SENTINEL FAILOVER", SENTINEL_MASTER)
        finally:
            client.close()
        _wait_for("the sentinel did not fail over",
                  lambda: self.master_port() != old and _info(
                      self.master_port(), "replication").get("role") == "master",
                  [s.log for s in self.servers])
        return self.master_port()

    def stop(self) -> None:
        for server in reversed(self.servers):
            server.stop()


@pytest.fixture(scope="session")
def redis_cluster_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The seed nodes of a private three-master Redis Cluster, started once per session."""
    with running(RedisClusterServers(tmp_path_factory.mktemp("redis-cluster"))) as cluster:
        yield cluster.url


@pytest.fixture(scope="session")
def redis_sentinel(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisSentinelSetup]:
    """A private master + replica + sentinel, started once per session (never failed over:
    the failover test starts a setup of its own)."""
    with running(RedisSentinelSetup(tmp_path_factory.mktemp("redis-sentinel"))) as setup:
        yield setup
