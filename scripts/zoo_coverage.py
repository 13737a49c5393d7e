"""The README's zoo coverage table, rendered from the stage records of tests/test_zoo.py (or of a
fresh run of the same stages, nnbridge.demo.zoo.run_entry), with every variant timed against
torch eager in its own process (too slow for the test suite, so measured here, once), written to
<out>/records.json and into README.md between the zoo-coverage markers.

    NNBRIDGE_ZOO_RECORDS=/tmp/zoo.json pytest tests/test_zoo.py --basetemp=/tmp/zoo-pytest
    PYTHONPATH=src .venv/bin/python scripts/zoo_coverage.py --from-records /tmp/zoo.json
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
    parser.add_argument("--from-records", type=Path, default=None,
                        help="records written by tests/test_zoo.py (NNBRIDGE_ZOO_RECORDS); else run the stages here")
    parser.add_argument("--out", type=Path, default=ROOT / "results" / "zoo")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--no-readme", action="store_true")
    parser.add_argument("--no-speed", action="store_true", help="render the stages only (no timing)")
    args = parser.parse_args()
    done = json.loads(args.from_records.read_text()) if args.from_records else {}
    runs = []
    for net in ZOO:
        if net.name in done:
            entry, records, folder = done[net.name]["entry"], done[net.name]["records"], Path(done[net.name]["folder"])
        elif args.from_records:
            continue
        else:
            folder = args.out / net.name
            entry = prepare(net, folder)
            records = run_entry(entry, folder)
        speed = None if args.no_speed else measure_speed(entry, records, folder, threads=args.threads,
                                                         warmup=2, repeats=args.repeats)
        runs.append({"name": net.name, "library": net.library, "class": net.short_class,
                     "saved_as": net.saved_as, "what": net.what, "entry": entry,
                     "records": records, "speed": speed})
        print(net.name, speed and {n: r.get("speedup_vs_torch_eager") for n, r in speed["results"].items()}, flush=True)
    cpu = cpu_identity()
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "records.json").write_text(json.dumps({"cpu": cpu, "runs": runs}, indent=1, default=str))
    table = coverage_table(runs)
    note = (f"Measured {dt.date.today().isoformat()} on {cpu['cpu']} ({cpu['cpus']} CPUs; "
            f"{', '.join(cpu['isa']) or 'no AVX-512/AMX'}), {args.threads} threads, batch 1 at each "
            "network's example size; speed-up = torch eager's p50 latency over the variant's, each "
            "in its own process; only variants that passed their gate count.")
    print(table)
    if not args.no_readme:
        readme = ROOT / "README.md"
        readme.write_text(replace_section(readme.read_text(), note + "\n\n" + table))


if __name__ == "__main__":
    main()
