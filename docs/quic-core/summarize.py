import json, statistics as st, sys
from collections import defaultdict
rows = [json.loads(l) for l in open(sys.argv[1] if len(sys.argv) > 1 else "results.jsonl")]
g = defaultdict(lambda: defaultdict(list))
for r in rows:
    for k, v in r.items():
        if isinstance(v, (int, float)) and k not in ("pkts",):
            g[(r["kind"], r["lib"])][k].append(v)
for (kind, lib), m in sorted(g.items()):
    parts = []
    for k, vs in m.items():
        parts.append(f"{k}={st.median(vs):.4g} ({min(vs):.4g}-{max(vs):.4g})")
    print(f"{kind:12s} {lib:11s} n={len(next(iter(m.values())))} " + " ".join(parts))
