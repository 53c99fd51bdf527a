#!/usr/bin/env python3
"""Synthetic plain-text JSONL for benchmarks (cluster/bench_train.sh, cluster/scaling.sh):
`rows` records of 120 words each from a small vocabulary, seeded, so every run trains on the
same tokens.  Usage: synthetic_text.py OUT.jsonl [rows (4000)]"""
import json
import random
import sys

out = sys.argv[1]
rows = int(sys.argv[2]) if len(sys.argv) > 2 else 4000
random.seed(0)
words = "the a model learns tokens from data and the loss goes down while we train it on text".split()
with open(out, "w") as f:
    for _ in range(rows):
        f.write(json.dumps({"text": " ".join(random.choice(words) for _ in range(120))}) + "\n")
