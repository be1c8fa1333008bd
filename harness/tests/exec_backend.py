#!/usr/bin/env python3
"""A complete svclab exec: backend, as an example of the agent protocol
(backends/PROTOCOL.md). It programs nothing; it keeps the Services and
EndpointSlices it is told about and, on every SYNC, answers with the number
of service ports and endpoints it knows. It checks the protocol as it goes
and exits non-zero (which the lab reports) if the agent breaks it."""
import json
import sys

services = {}   # "ns/name" -> number of ports
slices = {}     # "ns/name" -> number of endpoints
config = None
synced = False
last_seq = 0
events = 0


def key(obj):
    meta = obj.get("metadata", {})
    return f'{meta.get("namespace", "default")}/{meta.get("name", "")}'


def fail(why):
    print(f"exec_backend.py: protocol violation: {why}", file=sys.stderr)
    sys.exit(2)


for line in sys.stdin:
    msg = json.loads(line)
    kind = msg.get("type")
    if config is None and kind != "CONFIG":
        fail("the first line is not CONFIG")
    if kind == "CONFIG":
        config = msg["node"]
    elif kind == "SYNCED":
        synced = True
    elif kind in ("ADDED", "MODIFIED", "DELETED"):
        events += 1
        obj = msg["object"]
        table = services if obj["kind"] == "Service" else slices
        if kind == "DELETED":
            table.pop(key(obj), None)
        elif obj["kind"] == "Service":
            table[key(obj)] = len(obj.get("spec", {}).get("ports") or [])
        else:
            table[key(obj)] = len(obj.get("endpoints") or [])
    elif kind == "SYNC":
        if not synced:
            fail("SYNC before SYNCED")
        if msg["seq"] != last_seq + 1:
            fail(f"SYNC seq {msg['seq']} after {last_seq}")
        last_seq = msg["seq"]
        reply = {"seq": msg["seq"], "rules": sum(services.values()) + sum(slices.values()), "written": events}
        print(json.dumps(reply), flush=True)
    else:
        fail(f"unknown line type {kind!r}")

print(f"exec_backend.py: {config['nodeName']}: clean exit after {last_seq} syncs, {events} events",
      file=sys.stderr)
