#!/usr/bin/env python3
"""Picks at most MAX inputs of a libFuzzer merge control file (-merge_control_file, written by a
-merge=1 run) by greedy set cover of the coverage edges (COV lines): each pick adds the most edges
not yet covered, smaller files first among equals. cluster/fuzz.sh uses it to keep the committed
corpora small. Prints the chosen paths and, on stderr, the edges they keep of all.
Usage: select_corpus.py CONTROL_FILE MAX"""
import sys

lines = open(sys.argv[1]).read().splitlines()
limit = int(sys.argv[2])
n = int(lines[0])
paths = lines[2:2 + n]
size, cov = {}, {}
for line in lines[2 + n:]:
    f = line.split()
    if f[0] == "STARTED":
        size[int(f[1])] = int(f[2])
    elif f[0] == "COV":
        cov[int(f[1])] = set(map(int, f[2:]))
everything = set().union(*cov.values()) if cov else set()
covered, chosen = set(), []
while len(chosen) < limit:
    best = max(cov, key=lambda i: (len(cov[i] - covered), -size.get(i, 0)), default=None)
    if best is None or not cov[best] - covered:
        break
    covered |= cov.pop(best)
    chosen.append(paths[best])
print("\n".join(chosen))
print(f"select_corpus: {len(chosen)} inputs keep {len(covered)} of {len(everything)} edges",
      file=sys.stderr)
