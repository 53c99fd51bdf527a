#!/usr/bin/env python3
"""Writes a synthetic JSON Lines input of at least N bytes for `ftune prepare` benchmarks.

usage: tests/bench_data.py OUT.jsonl SIZE_MB [qa|alpaca|text]
"""
import json
import random
import sys

out, size_mb = sys.argv[1], float(sys.argv[2])
kind = sys.argv[3] if len(sys.argv) > 3 else "alpaca"
words = ("the of and to in is was for on that with as by at from his her an were which are "
         "this be or had not but have one all their they been has would who more when will "
         "there can time other about many some into may than only new people years world").split()
rng = random.Random(0)
target = int(size_mb * 1e6)
written = 0
with open(out, "w") as f:
    i = 0
    while written < target:
        def text(n):
            return " ".join(rng.choice(words) for _ in range(n))
        if kind == "qa":
            rec = {"question": text(rng.randint(5, 40)) + "?", "answer": text(rng.randint(5, 200))}
        elif kind == "text":
            rec = {"text": text(rng.randint(50, 600))}
        else:
            rec = {"instruction": text(rng.randint(5, 40)),
                   "input": text(rng.randint(0, 60)) if i % 2 else "",
                   "output": text(rng.randint(10, 300))}
        line = json.dumps(rec) + "\n"
        f.write(line)
        written += len(line)
        i += 1
print(f"{out}: {written / 1e6:.1f} MB, {i} records")
