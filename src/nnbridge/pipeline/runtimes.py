"""The pipeline's own cost: wall time per stage (rule) of the jobs behind the current results,
read from the records Snakemake keeps per output file (``.snakemake/metadata``: rule, start and
end time), so that every stage counts, not only those with a ``benchmark:`` file.

The numbers describe the jobs that made today's results: after a partial rerun, the stages that
did not rerun keep the times of the run that made them.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any


def job_times(workdir: str | Path = ".") -> list[dict[str, Any]]:
    """One entry per job (rule, start, end, seconds, an output) from Snakemake's metadata;
    empty when there is none (a run without Snakemake, or its metadata deleted)."""
    folder = Path(workdir) / ".snakemake" / "metadata"
    jobs: dict[Any, dict[str, Any]] = {}
    for path in sorted(folder.glob("*")) if folder.is_dir() else []:
        try:
            record = json.loads(path.read_text())
            start, end = float(record["starttime"]), float(record["endtime"])
        except (OSError, ValueError, KeyError, TypeError):
            continue  # a job still running, or a record of another format: not counted
        key = (record.get("rule"), round(end, 3))  # one job, however many outputs it wrote
        if key in jobs:
            jobs[key]["start"] = min(jobs[key]["start"], start)
            jobs[key]["seconds"] = round(end - jobs[key]["start"], 2)
        else:
            try:
                output = base64.b64decode(path.name.replace("@", "/") + "==").decode()
            except ValueError:
                output = path.name
            jobs[key] = {"rule": record.get("rule"), "start": start, "end": end,
                         "seconds": round(end - start, 2), "output": output}
    return sorted(jobs.values(), key=lambda j: j["start"])


def stage_times(workdir: str | Path = ".", top: int = 5) -> dict[str, Any]:
    """Per rule: jobs, total and longest job seconds, sorted by total; the span from the first
    job's start to the last one's end; the ``top`` slowest stages."""
    jobs = job_times(workdir)
    if not jobs:
        return {"jobs": 0, "stages": [], "slowest": []}
    stages: dict[str, dict[str, Any]] = {}
    for job in jobs:
        stage = stages.setdefault(job["rule"], {"rule": job["rule"], "jobs": 0, "total_s": 0.0, "max_s": 0.0})
        stage["jobs"] += 1
        stage["total_s"] = round(stage["total_s"] + job["seconds"], 2)
        stage["max_s"] = max(stage["max_s"], job["seconds"])
    ordered = sorted(stages.values(), key=lambda s: -s["total_s"])
    span = max(j["end"] for j in jobs) - min(j["start"] for j in jobs)
    return {"jobs": len(jobs), "job_seconds": round(sum(j["seconds"] for j in jobs), 1),
            "span_s": round(span, 1), "first_start": min(j["start"] for j in jobs),
            "stages": ordered, "slowest": [s["rule"] for s in ordered[:top]]}
