"""`python -m realtime.cluster STATS_SOCKET`: each worker as the entry (HAProxy) sees it."""
from __future__ import annotations

import asyncio
import sys

from realtime.cluster.haproxy import show_stat


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m realtime.cluster STATS_SOCKET (printed by serve --haproxy)", file=sys.stderr)
        return 2
    print(f"{'worker':8} {'status':16} {'weight':>6} {'now':>5} {'total':>7}  check")
    for r in asyncio.run(show_stat(args[0])):
        if r["svname"] not in ("FRONTEND", "BACKEND"):
            print(f"{r['svname']:8} {r['status']:16} {r['weight']:>6} {r['scur']:>5} {r['stot']:>7}  "
                  f"{r.get('check_status', '')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
