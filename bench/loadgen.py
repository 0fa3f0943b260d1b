"""A small, fast load client for plugin sockets: N keep-alive connections, pre-encoded requests.

Used by the benchmarks to drive our plugin and the do-nothing stdlib plugin with the same client
and the same payloads. One asyncio loop in its own process; it parses only what HTTP/1.1 needs
(status line, Content-Length), so the client costs far less than the servers it measures.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class LoadResult:
    requests: int
    errors: int
    seconds: float
    latencies_ms: tuple[float, ...]
    allowed: int
    payloads: tuple[int, ...] = ()  # the index of the request each latency belongs to

    def by_payload(self) -> dict[int, list[float]]:
        """Latencies (ms) per request index."""
        out: dict[int, list[float]] = {}
        for index, latency in zip(self.payloads, self.latencies_ms, strict=True):
            out.setdefault(index, []).append(latency)
        return out

    @property
    def rate(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    def percentile(self, q: float) -> float:
        if not self.latencies_ms:
            return float("nan")
        ordered = sorted(self.latencies_ms)
        return ordered[min(len(ordered) - 1, int(q / 100 * len(ordered)))]

    @property
    def p50(self) -> float:
        return statistics.median(self.latencies_ms) if self.latencies_ms else float("nan")


def encode(path: str, body: bytes) -> bytes:
    """One plugin call as the daemon sends it: POST, no Content-Type, keep-alive."""
    head = (
        f"POST {path} HTTP/1.1\r\nHost: \r\nUser-Agent: Go-http-client/1.1\r\n"
        f"Accept: application/vnd.docker.plugins.v1.2+json\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    status_line = await reader.readline()
    if not status_line:
        raise ConnectionError("server closed the connection")
    status = int(status_line.split(b" ", 2)[1])
    length = 0
    while True:
        line = await reader.readline()
        if line in (b"\r\n", b"\n", b""):
            break
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value.strip())
    body = await reader.readexactly(length) if length else b""
    return status, body


async def _worker(
    socket_path: str,
    requests: Sequence[bytes],
    offset: int,
    deadline: float,
    latencies: list[float],
    counts: list[int],
    indices: list[int],
) -> None:
    reader, writer = await asyncio.open_unix_connection(socket_path)
    index = offset
    try:
        while time.perf_counter() < deadline:
            which = index % len(requests)
            payload = requests[which]
            index += 1
            started = time.perf_counter()
            writer.write(payload)
            try:
                status, body = await _read_response(reader)
            except (OSError, asyncio.IncompleteReadError):
                counts[1] += 1
                writer.close()
                reader, writer = await asyncio.open_unix_connection(socket_path)
                continue
            latencies.append((time.perf_counter() - started) * 1000)
            indices.append(which)
            counts[0] += 1
            if status != 200:
                counts[1] += 1
            elif b'"Allow": true' in body or b'"Allow":true' in body:
                counts[2] += 1
    finally:
        writer.close()


async def _run(socket_path: str, requests: Sequence[bytes], connections: int, seconds: float) -> LoadResult:
    latencies: list[float] = []
    indices: list[int] = []
    counts = [0, 0, 0]  # requests, errors, allowed
    started = time.perf_counter()
    deadline = started + seconds
    stride = max(1, len(requests) // connections)
    await asyncio.gather(
        *(_worker(socket_path, requests, i * stride, deadline, latencies, counts, indices) for i in range(connections))
    )
    elapsed = time.perf_counter() - started
    return LoadResult(counts[0], counts[1], elapsed, tuple(latencies), counts[2], tuple(indices))


def run_load(socket_path: str, requests: Sequence[bytes], connections: int, seconds: float) -> LoadResult:
    return asyncio.run(_run(socket_path, requests, connections, seconds))
