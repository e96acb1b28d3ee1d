"""Print the benchmark JSON documents (benchmarks/common.py emit_json) as one short table each.

python benchmarks/summarize.py out/bench_*.json
"""

from __future__ import annotations

import json
import sys


def main(paths: list[str]) -> None:
    for path in paths:
        try:
            with open(path) as f:
                text = f.read()
        except OSError as err:
            print(f"{path}: unreadable ({err})")
            continue
        try:  # one (possibly indented) document, or one document per line
            docs = [json.loads(text)]
        except json.JSONDecodeError:
            docs = []
            for line in text.splitlines():
                try:
                    docs.append(json.loads(line))
                except json.JSONDecodeError:
                    pass
        if not docs:
            print(f"{path}: no result")
        for doc in docs:
            if isinstance(doc, list):  # a bare list of result rows
                doc = {"rows": doc}
            rows = doc.get("rows") or doc.get("results") or doc.get("cases") or []
            print(f"-- {doc.get('benchmark', path)} on {doc.get('device', '?')}")
            for r in rows:
                print(
                    "   "
                    + "  ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in r.items())
                )


if __name__ == "__main__":
    main(sys.argv[1:])
