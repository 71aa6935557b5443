"""Mutation score from a finished `mutmut run` (run by scripts/mutation.sh, from the repository root).

score = killed / (mutants - equivalent), per mutated module and in all. Killed includes timeouts and
crashes (the tests noticed); survivors and mutants no test reached count against the score. Equivalent
mutants are the rows of docs/MUTATION.md's "Equivalent mutants" table (first cell: the mutant's name in
backticks); they are left out, and a listed one that no longer survives is reported as stale.
Exits 1 below TARGET.
"""
from __future__ import annotations

import json
import re
import sys
import tomllib
from collections import Counter
from pathlib import Path

from mutmut.stats import status_by_exit_code

TARGET = 0.90
KILLED = {"killed", "timeout", "segfault", "caught by type check"}
DOC = Path("docs/MUTATION.md")


def equivalent_mutants(doc: Path = DOC) -> set[str]:
    """Mutant names in the first column of the "Equivalent mutants" section's table."""
    if not doc.is_file():
        return set()
    section = doc.read_text().split("## Equivalent mutants", 1)[-1].split("\n## ", 1)[0]
    return set(re.findall(r"^\|\s*`([\w.]+__mutmut_\d+)`", section, flags=re.M))


def main() -> int:
    modules = tomllib.loads(Path("pyproject.toml").read_text())["tool"]["mutmut"]["only_mutate"]
    equivalent = equivalent_mutants()
    rows, survivors, stale, seen = [], [], [], set()
    total = Counter()
    for module in modules:
        meta = Path("mutants") / f"{module}.meta"
        if not meta.is_file():
            print(f"{module}: no results (mutmut did not run it)")
            continue
        statuses = {name: status_by_exit_code[code]
                    for name, code in json.loads(meta.read_text())["exit_code_by_key"].items()}
        seen |= statuses.keys()
        counts = Counter()
        for name, status in sorted(statuses.items()):
            if status == "not checked":
                continue
            if name in equivalent:
                counts["equivalent"] += 1
                if status != "survived":
                    stale.append(f"{name} ({status})")
            elif status in KILLED:
                counts["killed"] += 1
            else:
                counts["alive"] += 1
                survivors.append(f"{name}: {status}")
        total.update(counts)
        rows.append((module, counts))
    print(f"{'module':42} {'mutants':>7} {'equiv':>5} {'killed':>6} {'alive':>5} {'score':>7}")
    for module, c in rows + [("all", total)]:
        counted = c["killed"] + c["alive"]
        score = f"{100 * c['killed'] / counted:.1f}%" if counted else "-"
        print(f"{module:42} {counted + c['equivalent']:7d} {c['equivalent']:5d} {c['killed']:6d} {c['alive']:5d} "
              f"{score:>7}")
    if survivors:
        print(f"\nsurviving, not listed as equivalent in {DOC} ({len(survivors)}; `mutmut show NAME` prints one):")
        print("\n".join(f"  {s}" for s in survivors))
    missing = sorted(equivalent - seen)
    if stale or missing:
        print(f"\nlisted as equivalent in {DOC} but killed or gone (update the list):")
        print("\n".join(f"  {s}" for s in stale + [f"{m} (no such mutant)" for m in missing]))
    counted = total["killed"] + total["alive"]
    score = total["killed"] / counted if counted else 0.0
    print(f"\nmutation score: {100 * score:.1f}% ({total['killed']} of {counted} killed, "
          f"{total['equivalent']} equivalent not counted; target {100 * TARGET:.0f}%)")
    return 0 if score >= TARGET else 1


if __name__ == "__main__":
    sys.exit(main())
