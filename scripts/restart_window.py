#!/usr/bin/env python3
"""The restart window of a deploy: how long nothing accepts connections on a web port.

Runs COMMAND (a `git push` that deploys) while connecting to 127.0.0.1:PORT every
INTERVAL, and prints, as JSON, the longest stretch during which connections were refused
(from the first refused attempt to the first accepted one after it), how many such
stretches there were, and how long the command took.

    scripts/restart_window.py --port 20000 -- git push kiln master
"""
import argparse
import json
import socket
import subprocess
import sys
import threading
import time


def probe(port, interval, stop, result):
    down_since = None
    while not stop.is_set():
        now = time.monotonic()
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                pass
            if down_since is not None:
                result["windows"].append(now - down_since)
                down_since = None
        except OSError:
            if down_since is None:
                down_since = now
        result["probes"] += 1
        time.sleep(interval)
    if down_since is not None:
        result["windows"].append(time.monotonic() - down_since)
        result["still_down"] = True


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--interval", type=float, default=0.002, help="seconds between probes")
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args()
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("give the command that deploys after --")
    result = {"windows": [], "probes": 0, "still_down": False}
    stop = threading.Event()
    thread = threading.Thread(target=probe, args=(args.port, args.interval, stop, result))
    thread.start()
    started = time.monotonic()
    done = subprocess.run(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    took = time.monotonic() - started
    # The rollback or the restart may still be settling: watch a moment longer.
    time.sleep(0.5)
    stop.set()
    thread.join()
    print(json.dumps({
        "window_seconds": max(result["windows"], default=0.0),
        "windows": len(result["windows"]),
        "still_down": result["still_down"],
        "probes": result["probes"],
        "command_seconds": took,
        "command_status": done.returncode,
    }))
    return 0 if done.returncode == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
