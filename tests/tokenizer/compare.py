#!/usr/bin/env python3
"""Compares two files of JSON lines (expected vs got) for the same corpus.

    python3 compare.py --corpus corpus.jsonl --expected ref.txt --got ftune.txt --label llama3

Prints the count of exact matches and the first mismatches (string, expected, got);
exits 1 on any mismatch or a line-count difference.
"""
import argparse
import json
import sys


def read_lines(path):
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--corpus", required=True)
    ap.add_argument("--expected", required=True)
    ap.add_argument("--got", required=True)
    ap.add_argument("--label", required=True)
    ap.add_argument("--show", type=int, default=5)
    a = ap.parse_args()
    corpus = read_lines(a.corpus)
    expected = read_lines(a.expected)
    got = read_lines(a.got)
    if not (len(corpus) == len(expected) == len(got)):
        print(f"{a.label}: line counts differ: corpus {len(corpus)}, expected {len(expected)}, "
              f"got {len(got)}")
        return 1
    bad = [i for i in range(len(corpus)) if expected[i] != got[i]]
    print(f"{a.label}: {len(corpus) - len(bad)}/{len(corpus)} exact matches")
    for i in bad[: a.show]:
        print(f"  mismatch at line {i + 1}:")
        print(f"    string:   {json.dumps(corpus[i], ensure_ascii=False)[:300]}")
        print(f"    expected: {json.dumps(expected[i], ensure_ascii=False)[:300]}")
        print(f"    got:      {json.dumps(got[i], ensure_ascii=False)[:300]}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
