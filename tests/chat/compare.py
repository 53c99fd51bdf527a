#!/usr/bin/env python3
"""Compares chat-template renders of one tokenizer across engines, for
tests/e2e/chat_template_parity_test.sh.

    compare.py --label NAME --cases conversations.jsonl --python py.jsonl --node js.jsonl \
               [--ftune ftune.jsonl] [--known-differences known.json] [--max-diffs 5]

Each results file has one JSON line per case, in the cases' order: {"name", "text"[, "ids"]},
{"name", "error"} or, from node and ftune, {"name", "skip"} (the engine cannot load the
tokenizer at all) and, from ftune, "ids_skip" instead of "ids".

A case passes when every engine that rendered it produced the same bytes, or when every engine
raised (the messages may differ). Python's jinja2 (what transformers runs) is the reference:
a case where transformers.js differs from it is a failure too, unless --known-differences lists
it ({"<label>": {"<case>": "why"}}); ftune is then held to Python alone. Token ids are compared
between ftune and node where both have them and both texts match Python's.

Prints one summary line and, on mismatches, the first --max-diffs of them with a readable diff;
exits 1 on any mismatch. The last line is machine-readable:
    COUNTS cases=N renders=N mismatches=N ids=N known=N
"""

import argparse
import difflib
import json
import sys


def load(path):
    rows = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                rows.append(json.loads(line))
    return rows


def outcome(row):
    if row is None:
        return "missing"
    if "skip" in row:
        return "skip"
    if "error" in row:
        return "error"
    if "text" in row:
        return "text"
    return "invalid"


def show(row):
    kind = outcome(row)
    if kind == "text":
        return json.dumps(row["text"], ensure_ascii=False)[:300]
    if kind == "error":
        return "error: " + str(row["error"])[:300]
    if kind == "skip":
        return "skip: " + str(row["skip"])[:300]
    return kind


def text_diff(expected, got, from_name, to_name):
    """A unified diff of two renders, line by line, with each line's repr so that whitespace and
    invisible characters show; falls back to the first differing character."""
    a = [repr(line) for line in expected.splitlines(keepends=True)]
    b = [repr(line) for line in got.splitlines(keepends=True)]
    lines = list(difflib.unified_diff(a, b, from_name, to_name, lineterm="", n=1))
    i = next((k for k, (x, y) in enumerate(zip(expected, got)) if x != y),
             min(len(expected), len(got)))
    lines.append(f"first difference at character {i}: {expected[i:i + 40]!r} vs {got[i:i + 40]!r}")
    return "\n".join(lines[:40])


def ids_diff(expected, got):
    i = next((k for k, (x, y) in enumerate(zip(expected, got)) if x != y),
             min(len(expected), len(got)))
    return (f"ids differ at position {i} (lengths {len(expected)} vs {len(got)}): "
            f"{expected[max(0, i - 3):i + 5]} vs {got[max(0, i - 3):i + 5]}")


def main():
    parser = argparse.ArgumentParser(description="compare chat-template renders")
    parser.add_argument("--label", required=True)
    parser.add_argument("--cases", required=True)
    parser.add_argument("--python", required=True)
    parser.add_argument("--node", required=True)
    parser.add_argument("--ftune")
    parser.add_argument("--known-differences")
    parser.add_argument("--max-diffs", type=int, default=5)
    args = parser.parse_args()

    names = [c["name"] for c in load(args.cases)]
    engines = {"python": args.python, "node": args.node}
    if args.ftune:
        engines["ftune"] = args.ftune
    results = {}
    problems = []
    for engine, path in engines.items():
        rows = load(path)
        by_name = {r.get("name"): r for r in rows}
        if [r.get("name") for r in rows] != names:
            problems.append((None, f"{engine}: {len(rows)} result lines do not name the "
                                   f"{len(names)} cases in order"))
        results[engine] = by_name
    known = {}
    if args.known_differences:
        with open(args.known_differences, encoding="utf-8") as f:
            known = json.load(f).get(args.label, {})

    node_skipped = all(outcome(results["node"].get(n)) == "skip" for n in names)
    renders = mismatches = ids_compared = known_hit = errors = 0
    ids_skipped = None
    for name in names:
        py = results["python"].get(name)
        js = results["node"].get(name)
        ft = results["ftune"].get(name) if "ftune" in results else None
        rows = {"python": py, "node": js}
        if ft is not None or "ftune" in results:
            rows["ftune"] = ft
        kinds = {e: outcome(r) for e, r in rows.items()}
        if kinds["python"] not in ("text", "error"):
            problems.append((name, f"python reference gave {kinds['python']}"))
            continue
        renders += 1
        errors += kinds["python"] == "error"

        def same(engine):
            if kinds[engine] != kinds["python"]:
                return False
            return kinds["python"] == "error" or rows[engine]["text"] == py["text"]

        node_agrees = kinds["node"] == "skip" or same("node")
        if not node_agrees:
            if name in known:
                known_hit += 1
            else:
                problems.append((name, "transformers.js differs from python jinja2", "node"))
        ftune_agrees = "ftune" in rows and same("ftune")
        if "ftune" in rows and not ftune_agrees:
            problems.append((name, "ftune differs from python jinja2", "ftune"))
        if ftune_agrees and kinds["ftune"] == "text":
            if "ids_skip" in ft:
                ids_skipped = ids_skipped or str(ft["ids_skip"])
            elif "ids" not in ft:
                problems.append((name, "ftune gave neither \"ids\" nor \"ids_skip\""))
        if (ftune_agrees and kinds["ftune"] == "text" and kinds["node"] == "text"
                and node_agrees and "ids" in ft and "ids" in js):
            ids_compared += 1
            if ft["ids"] != js["ids"]:
                problems.append((name, "token ids: " + ids_diff(js["ids"], ft["ids"])))

    for name in known:
        if name not in names:
            problems.append((name, "listed in --known-differences but not a case"))
    mismatches = len(problems)
    tail = []
    if node_skipped:
        tail.append("transformers.js skipped: " + str(results["node"][names[0]]["skip"])[:120])
    if known_hit:
        tail.append(f"{known_hit} known transformers.js differences")
    if "ftune" in results:
        tail.append(f"ids compared for {ids_compared}")
    if ids_skipped:
        tail.append("ftune skipped ids: " + ids_skipped[:120])
    print(f"{args.label}: {len(names)} conversations, {renders - errors} rendered, {errors} raise "
          f"in every engine, {mismatches} mismatches" + ("; " + "; ".join(tail) if tail else ""))
    for problem in problems[:args.max_diffs]:
        name, what = problem[0], problem[1]
        print(f"--- {args.label} / {name}: {what}")
        if len(problem) > 2 and name is not None:
            other = problem[2]
            py = results["python"].get(name)
            got = (results[other] or {}).get(name)
            if outcome(py) == "text" and outcome(got) == "text":
                print(text_diff(py["text"], got["text"], "python", other))
            else:
                print(f"    python: {show(py)}\n    {other}: {show(got)}")
    if len(problems) > args.max_diffs:
        print(f"... and {len(problems) - args.max_diffs} more")
    print(f"COUNTS cases={len(names)} renders={renders} mismatches={mismatches} "
          f"ids={ids_compared} known={known_hit}")
    return 1 if mismatches else 0


if __name__ == "__main__":
    sys.exit(main())
