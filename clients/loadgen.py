"""Send many concurrent requests to a pocketcnn service and count what goes wrong.

For reliability tests (does anything fail under concurrency, restarts, model reloads?), not for peak
throughput (the benchmark uses wrk). Standard library only: one thread per concurrent client, each
with its own persistent HTTP/1.1 connection (keep-alive), reopened only when the server closes it.

    python -m clients.loadgen http://127.0.0.1:8000 --file shoe.png --requests 500 --concurrency 8

Reports the number of requests, failures by HTTP status or exception, requests per second and the
50th/90th/99th percentile latency in milliseconds. Exit status 0 when every request got HTTP 200,
1 when some failed, 2 for bad arguments.
"""

from __future__ import annotations

import argparse
import http.client
import json
import math
import sys
import threading
import time
import urllib.parse
from collections import Counter

from clients.predict import PREDICT_PATH, encode_multipart, positive_int, read_image_part


def run_load(url: str, body: bytes, content_type: str, requests: int, concurrency: int,
             timeout: float = 30.0, on_answer=None) -> dict:
    """POST `body` `requests` times with `concurrency` keep-alive connections; return the report.

    `url` is the service's base URL (the body goes to /predict) or a full URL with a path, which is
    used as given (e.g. http://host:8000/v1/models/fashion_mnist:predict with a JSON body).
    `on_answer(outcome)`, if given, is called after every request with its HTTP status or exception name
    (from the client threads): a caller can follow the load while it runs.
    """
    if requests < 1 or concurrency < 1:
        raise ValueError(f"requests and concurrency must be at least 1 (got {requests} and {concurrency})")
    parsed = urllib.parse.urlsplit(url)
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        raise ValueError(f"'{url}' is not an http(s) URL")
    path = parsed.path if parsed.path not in ("", "/") else PREDICT_PATH
    if parsed.query:
        path += "?" + parsed.query
    connection_class = http.client.HTTPSConnection if parsed.scheme == "https" else http.client.HTTPConnection
    headers = {"Content-Type": content_type, "Content-Length": str(len(body)), "Connection": "keep-alive"}

    claimed = iter(range(requests))  # next() on a shared iterator is atomic under the GIL
    lock = threading.Lock()
    latencies_ms: list[float] = []
    failures: Counter = Counter()
    statuses: Counter = Counter()
    connections = [0]

    def client() -> None:
        connection = None
        for _ in claimed:
            if connection is None or connection.sock is None:
                # A new TCP connection: the first, or the server closed the last one (Connection: close).
                connection = connection or connection_class(parsed.hostname, parsed.port, timeout=timeout)
                with lock:
                    connections[0] += 1
            started = time.perf_counter()
            try:
                connection.request("POST", path, body=body, headers=headers)
                response = connection.getresponse()
                response.read()  # the whole answer, or the connection cannot be reused
                outcome = response.status
            except (OSError, http.client.HTTPException) as err:
                outcome = type(err).__name__
                connection.close()  # start over on a fresh connection
            elapsed = (time.perf_counter() - started) * 1000
            with lock:
                latencies_ms.append(elapsed)
                if outcome == 200:
                    statuses[200] += 1
                elif isinstance(outcome, int):
                    statuses[outcome] += 1
                    failures[f"HTTP {outcome}"] += 1
                else:
                    failures[outcome] += 1
            if on_answer is not None:
                on_answer(outcome)
        if connection is not None:
            connection.close()

    threads = [threading.Thread(target=client, name=f"loadgen-{i}", daemon=True) for i in range(concurrency)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed_s = time.perf_counter() - started
    ordered = sorted(latencies_ms)
    return {
        "url": urllib.parse.urlunsplit((parsed.scheme, parsed.netloc, path, "", "")),
        "requests": len(ordered),
        "concurrency": concurrency,
        "ok": statuses[200],
        "failed": sum(failures.values()),
        "failures": dict(sorted(failures.items())),
        "connections": connections[0],
        "seconds": round(elapsed_s, 3),
        "requests_per_second": round(len(ordered) / elapsed_s, 1) if elapsed_s > 0 else None,
        "latency_ms": {
            "p50": _percentile(ordered, 50),
            "p90": _percentile(ordered, 90),
            "p99": _percentile(ordered, 99),
            "max": round(ordered[-1], 2) if ordered else None,
            "mean": round(sum(ordered) / len(ordered), 2) if ordered else None,
        },
    }


def _percentile(ordered: list[float], percent: float) -> float | None:
    """Nearest-rank percentile of sorted values: the smallest value with `percent` % at or below it."""
    if not ordered:
        return None
    rank = max(1, math.ceil(percent / 100 * len(ordered)))
    return round(ordered[rank - 1], 2)


def format_report(report: dict) -> str:
    latency = report["latency_ms"]
    lines = [
        f"{report['requests']} requests to {report['url']} with concurrency {report['concurrency']} "
        f"over {report['connections']} connections in {report['seconds']:.2f} s "
        f"({report['requests_per_second']} req/s)",
        f"ok: {report['ok']}   failed: {report['failed']}",
    ]
    lines += [f"  {reason}: {count}" for reason, count in report["failures"].items()]
    lines.append(f"latency ms: p50 {latency['p50']}  p90 {latency['p90']}  p99 {latency['p99']}  "
                 f"max {latency['max']}  mean {latency['mean']}")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m clients.loadgen",
        description="POST one photo many times, concurrently, over keep-alive connections to a pocketcnn "
                    "service's /predict, and count failures by HTTP status or exception.",
        epilog="Exit status: 0 every request answered 200; 1 some failed; 2 bad arguments.",
    )
    parser.add_argument("url", metavar="URL", help="the service's base URL, e.g. http://127.0.0.1:8000")
    parser.add_argument("--file", required=True, metavar="PHOTO", help="the photo to send (multipart field 'image')")
    parser.add_argument("--requests", type=positive_int, default=200, metavar="N",
                        help="requests in all (default: 200)")
    parser.add_argument("--concurrency", type=positive_int, default=4, metavar="C",
                        help="requests in flight at once, one connection each (default: 4)")
    parser.add_argument("--timeout", type=float, default=30.0, metavar="SECONDS",
                        help="socket timeout per request (default: 30)")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:
        return int(exit_.code or 0)
    try:
        part = read_image_part(args.file)
    except OSError as err:
        print(f"error: cannot read {args.file}: {err.strerror or err}", file=sys.stderr)
        return 2
    body, content_type = encode_multipart([part])
    try:
        report = run_load(args.url, body, content_type, args.requests, args.concurrency, args.timeout)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(json.dumps(report) if args.json else format_report(report))
    return 0 if report["failed"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
