"""Print the benchmark JSON documents (benchmarks/common.py emit_json) as one short table each.

    python benchmarks/summarize.py out/bench_*.json
"""

from __future__ import annotations

import json
import sys


def main(paths: list[str]) -> None:
    for path in paths:
        docs = []
        try:
            with open(path) as f:
                for line in f:
                    line = line.strip()
                    if line.startswith("{"):
                        docs.append(json.loads(line))
        except (OSError, json.JSONDecodeError) as err:
            print(f"{path}: unreadable ({err})")
            continue
        if not docs:
            print(f"{path}: no result")
        for doc in docs:
            rows = doc.get("rows") or doc.get("results") or []
            print(f"-- {doc.get('benchmark', path)} on {doc.get('device', '?')}")
            for r in rows:
                print("   " + "  ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                                        for k, v in r.items()))


if __name__ == "__main__":
    main(sys.argv[1:])
