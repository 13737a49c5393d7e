"""The README's zoo coverage table: every network of the zoo through the same stages as
tests/test_zoo.py (nnbridge.demo.zoo.run_entry), then each variant timed against torch eager in
its own process (too slow for the test suite, so measured here once), written to
<out>/records.json and rendered into README.md between the zoo-coverage markers.

    PYTHONPATH=src .venv/bin/python scripts/zoo_coverage.py [--out results/zoo] [--only NAME ...]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
from pathlib import Path

from nnbridge.core.cpu import cpu_identity
from nnbridge.demo.zoo import ZOO, measure_speed, prepare, run_entry
from nnbridge.report.zoo import coverage_table, replace_section

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "results" / "zoo")
    parser.add_argument("--only", nargs="*", default=None)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--no-readme", action="store_true")
    args = parser.parse_args()
    runs = []
    for net in ZOO:
        if args.only and net.name not in args.only:
            continue
        folder = args.out / net.name
        entry = prepare(net, folder)
        records = run_entry(entry, folder)
        speed = measure_speed(entry, records, folder, threads=args.threads)
        runs.append({"name": net.name, "library": net.library, "class": net.short_class,
                     "saved_as": net.saved_as, "what": net.what, "entry": entry,
                     "records": records, "speed": speed})
        print(net.name, {k: r["status"] for k, r in records.items()}, flush=True)
    cpu = cpu_identity()
    (args.out / "records.json").write_text(json.dumps({"cpu": cpu, "runs": runs}, indent=1, default=str))
    table = coverage_table(runs)
    note = (f"Measured {dt.date.today().isoformat()} on {cpu['cpu']} ({cpu['cpus']} CPUs; "
            f"{', '.join(cpu['isa']) or 'no AVX-512/AMX'}), {args.threads} threads, batch 1 at each "
            "network's example size; speed-ups are p50 latency of torch eager over the variant's, "
            "each in its own process; only variants that passed their gate count.")
    print(table)
    if not args.no_readme:
        readme = ROOT / "README.md"
        readme.write_text(replace_section(readme.read_text(), note + "\n\n" + table))


if __name__ == "__main__":
    main()
