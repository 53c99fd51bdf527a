#!/usr/bin/env python3
"""One row of the tokenizer throughput table from the two --bench JSON lines.

    python3 bench_row.py NAME '<hf-js bench json>' '<ftune bench json>'

Prints: name tokens ftune_tokens_per_s reference_tokens_per_s ratio. Exits 1 when the two
runs did not produce the same number of tokens (they encode the same corpus).
"""
import json
import sys


def main():
    name, ref, got = sys.argv[1], json.loads(sys.argv[2]), json.loads(sys.argv[3])
    if ref["tokens"] != got["tokens"]:
        print(f"{name}: token counts differ: reference {ref['tokens']}, ftune {got['tokens']}",
              file=sys.stderr)
        return 1
    ratio = got["tokens_per_s"] / ref["tokens_per_s"]
    print(f"{name} {ref['tokens']} {got['tokens_per_s']:.0f} {ref['tokens_per_s']:.0f} {ratio:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
