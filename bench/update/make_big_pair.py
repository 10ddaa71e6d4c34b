#!/usr/bin/env python3
"""Build a synthetic old/new image pair the way system images change:
old = file-like runs of random (incompressible) and text-like (compressible)
blocks; new = old with file-like runs moved elsewhere, small edits inside
blocks, and blocks inserted that shift the data after them.
Usage: make_big_pair.py OLD NEW [MiB] [seed]"""
import os, random, sys

old_path, new_path = sys.argv[1], sys.argv[2]
mib = int(sys.argv[3]) if len(sys.argv) > 3 else 1024
rng = random.Random(int(sys.argv[4]) if len(sys.argv) > 4 else 1)
BS = 4096
n = mib * 256
words = [b"config", b"value", b"system", b"library", b"update", b"android", b"kernel", b"block",
         b"device", b"mapper", b"=", b"\n", b" ", b"true", b"false", b"0x", b"path/to/file"]
def text_block():
    out = bytearray()
    while len(out) < BS:
        out += rng.choice(words) + str(rng.randrange(1000)).encode()
    return bytes(out[:BS])

old = bytearray(n * BS)
b = 0
while b < n:
    run = rng.randrange(1, 64)
    kind = rng.random()
    end = min(n, b + run)
    if kind < 0.45:
        old[b * BS:end * BS] = os.urandom((end - b) * BS)
    elif kind < 0.9:
        old[b * BS:end * BS] = b"".join(text_block() for _ in range(end - b))
    # else: zeroes (free space)
    b = end
new = bytearray(old)
changes = max(1, n // 2000)
for _ in range(changes):  # moved files
    ln = rng.randrange(4, 128)
    src, dst = rng.randrange(n - ln), rng.randrange(n - ln)
    new[dst * BS:(dst + ln) * BS] = old[src * BS:(src + ln) * BS]
for _ in range(changes * 4):  # small edits
    blk = rng.randrange(n)
    for _ in range(rng.randrange(1, 16)):
        new[blk * BS + rng.randrange(BS)] = rng.randrange(256)
for _ in range(changes // 2):  # inserted blocks shift the rest of a region
    at, k, region = rng.randrange(n - 600), rng.randrange(1, 8), rng.randrange(64, 512)
    seg = bytes(new[at * BS:(at + region - k) * BS])
    new[at * BS:(at + k) * BS] = os.urandom(k * BS) if rng.random() < 0.5 else b"".join(text_block() for _ in range(k))
    new[(at + k) * BS:(at + region) * BS] = seg
open(old_path, "wb").write(old)
open(new_path, "wb").write(new)
