"""Real ``redis-server`` processes for the Sentinel and Cluster tests: each on a free port in a temp dir, its start
waited for (bounded), killed after. Skipped off CI when ``redis-server`` is absent; under CI it must be there.
``KEEP_REDIS_DIRS=1`` keeps their directories (and logs) after the test."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from tests.conftest import free_port

START_WAIT = 10.0  # seconds a server gets to answer PING


def redis_server() -> str:
    found = shutil.which("redis-server")
    if found is None:
        if os.environ.get("CI") == "true":
            pytest.fail("redis-server must be installed under CI (.ci/run installs it)")
        pytest.skip("redis-server is not installed")
    return found


class Server:
    def __init__(self, process: subprocess.Popen[bytes], port: int) -> None:
        self.process, self.port = process, port

    def client(self) -> redis.Redis:
        return redis.Redis(port=self.port, socket_timeout=2)

    def kill(self) -> None:
        if self.process.poll() is None:
            self.resume()  # a stopped process takes its SIGKILL too, but say it plainly
            self.process.kill()
            self.process.wait(5)

    def pause(self) -> None:
        """Stop the process (SIGSTOP): connected, silent. A paused replica acknowledges nothing, so ``WAIT`` on its
        primary times out, every time."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGCONT)


class Relay:
    """A TCP relay to a server (a replica's link to its primary) that can hold what the server sends: from
    :meth:`hold` on, the replica receives nothing more (and so acknowledges nothing), as behind a network partition;
    what was held is dropped by :meth:`close`. Threads: the test's event loop may block on the servers meanwhile."""

    def __init__(self, target: Server) -> None:
        self._target = target.port
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self._flowing = threading.Event()
        self._flowing.set()
        self._closed = False
        self._sockets: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def hold(self) -> None:
        self._flowing.clear()

    def close(self) -> None:
        self._closed = True
        self._flowing.set()  # the held pumps wake up, find the relay closed and drop what they hold
        for sock in [self._listener, *self._sockets]:
            with contextlib.suppress(OSError):
                sock.close()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            try:
                server = socket.create_connection(("127.0.0.1", self._target), timeout=2)
            except OSError:
                client.close()
                continue
            server.settimeout(None)
            self._sockets += [client, server]
            threading.Thread(target=self._pump, args=(server, client, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(client, server, False), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket, holdable: bool) -> None:
        with contextlib.suppress(OSError):
            while data := source.recv(65536):
                if holdable:
                    self._flowing.wait()  # held: this chunk and all after it stay here
                if self._closed:
                    break
                sink.sendall(data)
        with contextlib.suppress(OSError):
            sink.shutdown(socket.SHUT_RDWR)


@contextlib.contextmanager
def servers() -> Iterator[Servers]:
    group = Servers(redis_server())
    try:
        yield group
    finally:
        group.close()


class Servers:
    def __init__(self, binary: str) -> None:
        self._binary = binary
        self._all: list[Server] = []
        self._dirs: list[Path] = []
        self._relays: list[Relay] = []

    def _start(self, args: list[str], port: int, directory: Path) -> Server:
        log = (directory / "log").open("wb")
        process = subprocess.Popen(
            [self._binary, *args], cwd=directory, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        server = Server(process, port)
        self._all.append(server)
        deadline = time.monotonic() + START_WAIT
        with server.client() as client:
            while True:
                try:
                    client.ping()
                    return server
                except redis.RedisError:
                    if process.poll() is not None or time.monotonic() > deadline:
                        raise AssertionError(f"redis-server did not start: {(directory / 'log').read_text()}") from None
                    time.sleep(0.05)

    def _dir(self) -> Path:
        import tempfile

        directory = Path(tempfile.mkdtemp(prefix="redis-test-"))
        self._dirs.append(directory)
        return directory

    def redis(self, *extra: str) -> Server:
        port = free_port()
        base = ["--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        base += ["--repl-diskless-sync-delay", "0"]  # a replica syncs at once, not after 5 s
        return self._start([*base, *extra], port, self._dir())

    def relay(self, target: Server) -> Relay:
        """A relay to ``target``, closed with the servers."""
        relay = Relay(target)
        self._relays.append(relay)
        return relay

    def replica_of(self, primary: Server, *, via: Relay | None = None) -> Server:
        """A replica of ``primary`` (linked through ``via`` when given), once its link is up."""
        replica = self.redis("--replicaof", "127.0.0.1", str(via.port if via is not None else primary.port))
        deadline = time.monotonic() + START_WAIT
        with replica.client() as client:
            while client.info("replication").get("master_link_status") != "up":
                assert time.monotonic() < deadline, "the replica did not sync"
                time.sleep(0.05)
        return replica

    def sentinel(self, primary: Server, service: str) -> Server:
        directory, port = self._dir(), free_port()
        config = directory / "sentinel.conf"
        config.write_text(
            f"port {port}\nbind 127.0.0.1\n"
            f"sentinel monitor {service} 127.0.0.1 {primary.port} 1\n"
            f"sentinel down-after-milliseconds {service} 400\n"
            f"sentinel failover-timeout {service} 2000\n"
        )
        return self._start([str(config), "--sentinel"], port, directory)

    def cluster(self, primaries: int = 3, *, replicas: int = 0) -> list[Server]:
        """A Redis Cluster of ``primaries`` primaries (and ``replicas`` replicas each), its slots assigned and
        every node agreeing before it is returned. Node timeout 1 s: a failover takes a second or two."""
        binary = str(Path(self._binary).with_name("redis-cli"))
        if not Path(binary).exists():
            binary = shutil.which("redis-cli") or "redis-cli"
        options = ["--cluster-enabled", "yes", "--cluster-node-timeout", "1000", "--cluster-config-file", "nodes.conf"]
        # The bus port is given: by default it is the port + 10000, past 65535 for a high free port.
        nodes = [self.redis(*options, "--cluster-port", str(free_port())) for _ in range(primaries * (1 + replicas))]
        addresses = [f"127.0.0.1:{n.port}" for n in nodes]
        subprocess.run(
            [binary, "--cluster", "create", *addresses, "--cluster-replicas", str(replicas), "--cluster-yes"],
            check=True,
            capture_output=True,
            timeout=30,
        )
        deadline = time.monotonic() + START_WAIT * 2
        for node in nodes:
            with node.client() as client:
                while client.cluster("info").get("cluster_state") != "ok":
                    assert time.monotonic() < deadline, "the cluster did not come up"
                    time.sleep(0.05)
        return nodes

    def close(self) -> None:
        for relay in self._relays:
            relay.close()
        for server in self._all:
            server.kill()
        if os.environ.get("KEEP_REDIS_DIRS"):  # each server's directory and log, for a post-mortem
            print("redis-server directories kept:", *self._dirs)
            return
        for directory in self._dirs:
            shutil.rmtree(directory, ignore_errors=True)
