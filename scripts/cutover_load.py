#!/usr/bin/env python3
"""Requests through the front door while a command runs (a deploy, a rollback, a restart).

Runs COMMAND while CLIENTS threads send `GET /` with `Host: HOST` to 127.0.0.1:PORT, each on a
connection of its own, one after the other with a short pause, from a moment before the
command starts until a moment after it ends. Prints one JSON object: how many requests were
sent while the command ran, how many of them failed (no HTTP answer, or a 5xx) and over how
long a stretch, how many took over 100 ms, the longest latency and the p50/p99 latencies of
those requests, the answers' first lines (the app's
version) with their counts, and how long the command took and its exit status.

The switch: the app answers its version on the first line of the body and, on the second, what
tells one start of it from the next (its server's pid). A switch is the stretch from the
sending of the last request one start answered to the first answer of the next start: the
requests sent then found the old one stopped and had to wait for the new one (or failed).
Their count, failures and p50/p99 latencies are reported apart (`switch_*`); an overlap, where
the new start answers before the old one's last answer, has none.

    scripts/cutover_load.py --port 8080 --host shop.bench -- git push kiln master
"""
import argparse
import json
import socket
import subprocess
import sys
import threading
import time


def get(port, host):
    """One request: (status, first line of the body, second line), or (None, the error, None)."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as conn:
            conn.settimeout(120)
            conn.sendall(f"GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
            chunks = []
            while True:
                chunk = conn.recv(65536)
                if not chunk:
                    break
                chunks.append(chunk)
        raw = b"".join(chunks).decode("latin-1")
        status = int(raw.split(" ", 2)[1])
        body = raw.split("\r\n\r\n", 1)[1] if "\r\n\r\n" in raw else ""
        lines = body.splitlines() + ["", ""]
        return status, lines[0], lines[1]
    except (OSError, ValueError, IndexError) as e:
        return None, type(e).__name__, None


def client(port, host, pause, stop, samples):
    while not stop.is_set():
        sent = time.monotonic()
        status, body, start = get(port, host)
        samples.append((sent, time.monotonic(), status, body, start))
        time.sleep(pause)


def percentile(sorted_values, fraction):
    if not sorted_values:
        return 0.0
    index = min(len(sorted_values) - 1, int(round(fraction * (len(sorted_values) - 1))))
    return sorted_values[index]


def switches(samples):
    """The switches: (from, to) for each start of the app after the first, from the sending of
    the last request the start before answered to the first answer of this one."""
    first, last = {}, {}
    for sent, done, status, body, start in samples:
        if status is None or status >= 500 or not start:
            continue
        key = (body, start)
        first[key] = min(first.get(key, done), done)
        last[key] = max(last.get(key, sent), sent)
    order = sorted(first, key=first.get)
    return [(last[a], first[b]) for a, b in zip(order, order[1:]) if first[b] > last[a]]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--host", required=True)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--pause", type=float, default=0.002, help="seconds between requests")
    parser.add_argument("--margin", type=float, default=0.3, help="seconds of load before and after")
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args()
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("give the command to run under load after --")
    stop = threading.Event()
    per_client = [[] for _ in range(args.clients)]
    threads = [
        threading.Thread(target=client, args=(args.port, args.host, args.pause, stop, samples))
        for samples in per_client
    ]
    for thread in threads:
        thread.start()
    time.sleep(args.margin)
    started = time.monotonic()
    done = subprocess.run(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ended = time.monotonic()
    time.sleep(args.margin)
    stop.set()
    for thread in threads:
        thread.join()
    samples = sorted(s for per in per_client for s in per)
    during = [s for s in samples if started <= s[0] <= ended]
    latencies = sorted((s[1] - s[0]) * 1000 for s in during)
    windows = switches(samples)
    in_switch = [s for s in samples if any(a < s[0] <= b for a, b in windows)]
    switch_latencies = sorted((s[1] - s[0]) * 1000 for s in in_switch)
    failed = [s for s in during if s[2] is None or s[2] >= 500]
    # From the first failed request sent to the last one answered: how long requests failed.
    failing = (max(s[1] for s in failed) - min(s[0] for s in failed)) if failed else 0.0
    answers = {}
    for _, _, status, body, _ in samples:
        key = body if status is not None and status < 500 else f"failed: {status or body}"
        answers[key] = answers.get(key, 0) + 1
    print(json.dumps({
        "requests": len(during),
        "failed": len(failed),
        "failing_seconds": round(failing, 2),
        "slow": sum(1 for latency in latencies if latency > 100),
        "failed_outside": sum(1 for s in samples if (s[2] is None or s[2] >= 500)) - len(failed),
        "max_ms": round(latencies[-1], 1) if latencies else 0.0,
        "p50_ms": round(percentile(latencies, 0.50), 1),
        "p99_ms": round(percentile(latencies, 0.99), 1),
        "switches": len(windows),
        "switch_ms": round(sum(b - a for a, b in windows) * 1000, 1),
        "switch_requests": len(in_switch),
        "switch_failed": sum(1 for s in in_switch if s[2] is None or s[2] >= 500),
        "switch_p50_ms": round(percentile(switch_latencies, 0.50), 1),
        "switch_p99_ms": round(percentile(switch_latencies, 0.99), 1),
        "answers": answers,
        "last": samples[-1][3] if samples else None,
        "command_seconds": round(ended - started, 2),
        "command_status": done.returncode,
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
