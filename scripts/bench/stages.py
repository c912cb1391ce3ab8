#!/usr/bin/env python3
"""Prints what every Prometheus histogram observed between two scrapes of one /metrics page:
count, mean and p50/p90/p99 (each the upper bound of the bucket the quantile falls in).
Usage: stages.py BEFORE AFTER  (files holding the two scrapes). Used by scripts/bench-load.sh."""
import re
import sys

LINE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)$')


def parse(path):
    out = {}
    with open(path, encoding="utf-8") as f:
        for line in f:
            m = LINE.match(line.strip())
            if m:
                out[(m.group(1), m.group(2) or "")] = float(m.group(3))
    return out


def main():
    a, b = parse(sys.argv[1]), parse(sys.argv[2])
    hists = {}
    for (name, labels), v in b.items():
        if not name.endswith("_bucket"):
            continue
        le = re.search(r'le="([^"]*)"', labels).group(1)
        rest = re.sub(r',?le="[^"]*"', "", labels).replace("{,", "{")
        rest = "" if rest == "{}" else rest
        base = name[: -len("_bucket")]
        bound = float("inf") if le == "+Inf" else float(le)
        hists.setdefault((base, rest), []).append((bound, v - a.get((name, labels), 0.0)))
    for (base, rest), buckets in sorted(hists.items()):
        buckets.sort()
        key = lambda suffix: (base + suffix, rest)
        n = b.get(key("_count"), 0.0) - a.get(key("_count"), 0.0)
        if n <= 0:
            continue
        total = b.get(key("_sum"), 0.0) - a.get(key("_sum"), 0.0)

        def q(p):
            for bound, c in buckets:
                if c >= p * n:
                    return "> last bucket" if bound == float("inf") else f"<= {bound * 1000:g} ms"
            return "?"

        print(f"    {base}{rest}: n={n:.0f} mean {total / n * 1000:.2f} ms, "
              f"p50 {q(0.5)}, p90 {q(0.9)}, p99 {q(0.99)}")


if __name__ == "__main__":
    main()
