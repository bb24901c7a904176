#!/usr/bin/env python3
"""Writes seed inputs for the fuzz targets (standard library only).

Usage: seeds.py OUT_DIR RECORDED_FILE...

Each RECORDED_FILE is a recorded-event stream (length-delimited
EventSequence records, optionally gzip-compressed), such as
samples/sample-events.bin.gz or the output of `lookout-ingester sample`
(which encodes `sample::generate`). Writes:
  OUT_DIR/decode_convert/  single records, a few per distinct combination of
                           event kinds (so every kind the samples hold is in)
  OUT_DIR/replay_file/     runs of consecutive records, with their framing,
                           plus malformed framings
  OUT_DIR/quantity/        Kubernetes quantity strings
"""

import gzip
import hashlib
import os
import sys


def varint(b, i):
    """Reads an unsigned LEB128 varint at i; returns (value, next index)."""
    v = 0
    shift = 0
    while True:
        if i >= len(b) or shift > 63:
            raise ValueError("bad varint")
        c = b[i]
        i += 1
        v |= (c & 0x7F) << shift
        shift += 7
        if c < 0x80:
            return v, i


def records(stream):
    """Splits a stream into (framing + payload, payload) pairs."""
    out = []
    i = 0
    while i < len(stream):
        n, j = varint(stream, i)
        if j + n > len(stream):
            break
        out.append((stream[i : j + n], stream[j : j + n]))
        i = j + n
    return out


def fields(msg):
    """Top-level protobuf fields as (number, wire type, bytes or int)."""
    i = 0
    while i < len(msg):
        key, i = varint(msg, i)
        num, wt = key >> 3, key & 7
        if wt == 0:
            v, i = varint(msg, i)
        elif wt == 1:
            v, i = msg[i : i + 8], i + 8
        elif wt == 2:
            n, i = varint(msg, i)
            v, i = msg[i : i + n], i + n
        elif wt == 5:
            v, i = msg[i : i + 4], i + 4
        else:
            raise ValueError("wire type %d" % wt)
        yield num, wt, v


def signature(payload):
    """The event kinds (oneof field numbers) of one EventSequence."""
    kinds = set()
    try:
        for num, wt, v in fields(payload):
            if num == 5 and wt == 2:  # EventSequence.events
                for enum, ewt, _ in fields(v):
                    if enum != 18:  # Event.created
                        kinds.add(enum)
    except (ValueError, IndexError):
        return ("undecodable",)
    return tuple(sorted(kinds))


def write(directory, data):
    os.makedirs(directory, exist_ok=True)
    name = hashlib.sha1(data).hexdigest()
    with open(os.path.join(directory, name), "wb") as f:
        f.write(data)


QUANTITIES = [
    "0", "1", "-1", "+1", "1.", ".5", "+.5", "-.5", "1.050", "100m", "250m",
    "1.5", "2000", "2k", "1M", "1G", "1T", "1P", "1E", "1000E", "1e3", "1E3",
    "1e-3", "12e6", "1e48", "1e2147483647", "1e9223372036854775807", "1e-9",
    "1n", "1u", "0.000000001", "0.0000000001", "1Ki", "1.5Gi", "0.5Ki",
    "128Mi", "8Ei", "1Ei", "7Ei", "1024Ei", "Ki", "Pi", "Ei", "-", "+", ".",
    "9223372036854775807", "9223372036854775808", "-9223372036854775808",
    "99999999999999999999999999999999999999",
    "123456789012345678901234567890123456789012345678901234567890",
    "0.123456789012345678901234567890123456789012345678901234567890Gi",
    "00000000000000000000001", "1.0000000000000000000000000000000000000001",
    "4", "32Gi", "100Mi", "1m", "nvidia.com/gpu", "1 ", " 1", "1x", "1.2.3",
]


def main():
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    out = sys.argv[1]
    per_signature = {}
    streams = []
    for path in sys.argv[2:]:
        with open(path, "rb") as f:
            data = f.read()
        if data[:2] == b"\x1f\x8b":
            data = gzip.decompress(data)
        recs = records(data)
        streams.append(recs)
        for framed, payload in recs:
            kept = per_signature.setdefault(signature(payload), [])
            if len(kept) < 4:
                kept.append(payload)
    n_single = 0
    for kept in per_signature.values():
        for payload in kept:
            write(os.path.join(out, "decode_convert"), payload)
            n_single += 1

    replay = os.path.join(out, "replay_file")
    n_runs = 0
    for recs in streams:
        for length in (1, 2, 3, 5, 8, 13):
            for start in range(0, max(1, len(recs) - length), max(1, len(recs) // 6)):
                run = b"".join(framed for framed, _ in recs[start : start + length])
                if run:
                    write(replay, run)
                    n_runs += 1
    # Malformed framings: empty file, empty record, truncated record, a
    # length prefix that never ends, an over-long varint, an oversized length.
    first = streams[0][0][0] if streams and streams[0] else b"\x00"
    for bad in (b"", b"\x00", first[:-1], first + b"\x80", b"\xff" * 10,
                b"\xff" * 9 + b"\x01", b"\x80\x80\x80\x80\x01",
                b"\x80\x80\x80\x80\x80\x80\x80\x80\x80\x02"):
        write(replay, bad)
        n_runs += 1

    for q in QUANTITIES:
        write(os.path.join(out, "quantity"), q.encode())
    print(
        "seeds: decode_convert %d (%d event-kind combinations), replay_file %d, quantity %d"
        % (n_single, len(per_signature), n_runs, len(QUANTITIES))
    )


if __name__ == "__main__":
    main()
