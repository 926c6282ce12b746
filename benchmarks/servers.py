"""Servers the benchmarks publish to: the emulator and nginx, each a process pinned to one core.

Every server here listens on 127.0.0.1 only and is stopped when its context exits.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass

__all__ = ["CLIENT_CPU", "SERVER_CPU", "Server", "cpu_seconds", "emulator_server", "nginx_server", "pin"]

SERVER_CPU = 0
CLIENT_CPU = 1

MESSAGE_ID = "0123456789ABCDEF0123456789ABCDEF"


@dataclass
class Server:
    name: str
    http_url: str
    pid: int
    mqtt_port: int | None = None


def pin(pid: int, cpu: int) -> None:
    """Pins a process (0: this one) to one CPU when there is more than one."""
    if hasattr(os, "sched_setaffinity") and (os.cpu_count() or 1) > 1:
        os.sched_setaffinity(pid, {cpu})


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process, from /proc."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def emulator_stats(http_url: str, username: str = "user0", password: str = "secret0") -> dict:
    """``GET /emulator/stats`` (as one of the emulator's users: the stats name its clients)."""
    token = base64.b64encode(f"{username}:{password}".encode()).decode()
    request = urllib.request.Request(f"{http_url}/emulator/stats", headers={"Authorization": f"Basic {token}"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.load(response)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def emulator_server(*extra_args: str) -> Iterator[Server]:
    """``tdmq-emulator`` on free ports, pinned to `SERVER_CPU`."""
    process = subprocess.Popen(
        [sys.executable, "-m", "tdmq_beam.emulator", "--http-port", "0", "--mqtt-port", "0", *extra_args],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        line = process.stdout.readline()
        match = re.search(r"http=(\S+) mqtt=mqtt://[\d.]+:(\d+)", line)
        if not match:
            raise RuntimeError(f"the emulator did not start: {line!r}")
        pin(process.pid, SERVER_CPU)
        yield Server("emulator", match[1], process.pid, int(match[2]))
    finally:
        process.terminate()
        process.wait(timeout=30)


def nginx_binary() -> str | None:
    return shutil.which("nginx") or next(
        (path for path in ("/usr/sbin/nginx", "/usr/local/sbin/nginx") if os.path.exists(path)), None
    )


@contextlib.contextmanager
def nginx_server() -> Iterator[Server | None]:
    """nginx with one worker answering every request 200 with an X-Message-Id; None if not installed."""
    binary = nginx_binary()
    if binary is None:
        yield None
        return
    port = _free_port()
    with tempfile.TemporaryDirectory(prefix="bench-nginx-") as prefix:
        os.makedirs(os.path.join(prefix, "logs"), exist_ok=True)
        config = os.path.join(prefix, "nginx.conf")
        with open(config, "w") as handle:
            handle.write(
                f"""
worker_processes 1;
daemon off;
pid {prefix}/nginx.pid;
error_log {prefix}/logs/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {prefix}/body;
    keepalive_requests 10000000;
    server {{
        listen 127.0.0.1:{port};
        location / {{
            add_header X-Message-Id {MESSAGE_ID} always;
            return 200;
        }}
    }}
}}
"""
            )
        process = subprocess.Popen([binary, "-p", prefix, "-c", config], stderr=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 10
            while True:
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                    break
                except OSError:
                    if time.monotonic() > deadline or process.poll() is not None:
                        raise RuntimeError("nginx did not start") from None
                    time.sleep(0.05)
            for pid in [*_children(process.pid), process.pid]:
                pin(pid, SERVER_CPU)
            yield Server("nginx", f"http://127.0.0.1:{port}", process.pid)
        finally:
            process.terminate()
            process.wait(timeout=30)


def _children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as handle:
            return [int(child) for child in handle.read().split()]
    except OSError:
        return []
