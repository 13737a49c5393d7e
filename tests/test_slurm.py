"""The pipeline through the Slurm executor plugin on a real one-node Slurm cluster (slow).

``tests/slurm/cluster.sh start`` brings up munged, slurmctld and slurmd on this machine
(installing Debian's slurm-wlm and munge with apt-get when missing; needs root). The tests skip
with the script's one-line reason when it cannot, and always with ``NNBRIDGE_SKIP_SLURM=1``.
A cluster this module started is stopped again at the end.

The pipeline, reduced to a short run on the session's tiny trained nnU-Net fold (tests/conftest.py
``tiny_model``, the demo's dataset, plans and trainer at a smaller size; configured like a user's
model folder, so nothing is trained again), runs in a temporary copy of the project with ``--profile tests/slurm/profile``,
together with the demo's deterministic first stages (synthetic data, nnU-Net planning and
preprocessing, splits). Checked: every non-local job went through sbatch and completed in Slurm
with the resources snakemake computed for it (CPUs = threads, --mem = mem_mb, --time = runtime,
the profile's partition); benchmarks never overlapped; the exact export variants pass their
parity gates; the deterministic artifacts equal those the tiny model's local build made with the
same calls (its dataset is the one the reduced config's demo stages make).
Separately, a job that exits 1 is reported as failed within a minute (no hang).
"""

from __future__ import annotations

import getpass
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import pytest
import yaml

from conftest import copy_project

ROOT = Path(__file__).resolve().parents[1]
SNAKEMAKE = str(Path(sys.executable).parent / "snakemake")
CLUSTER_SH = ROOT / "tests" / "slurm" / "cluster.sh"
STATE = Path(os.environ.get("NNBRIDGE_SLURM_DIR", "/tmp/nnbridge-slurm"))
JOBCOMP = STATE / "jobcomp.log"
PARTITION = "local"  # tests/slurm/profile's slurm_partition; the cluster's default is another
FOLDS = ("0",)
MODEL = "Dataset900_NNBridgeDemo/nnBridgeDemoTrainer__nnBridgeDemoPlans__3d_fullres"
USER = "resources/user"  # where the trained demo model is copied, as a user's model folder
EXACT_VARIANTS = ("onnx_fp32", "onnx_simplified")
REFERENCE_TARGETS = (  # the deterministic part of the demo: data, planning, preprocessing, splits
    "resources/demo/nnUNet_preprocessed/Dataset900_NNBridgeDemo/nnBridgeDemoPlans.json",
    "resources/demo/nnUNet_preprocessed/Dataset900_NNBridgeDemo/splits_final.json",
)

pytestmark = [pytest.mark.slurm]


# --------------------------------------------------------------------------------------------
# helpers


def copy_slurm_project(dest: Path) -> Path:
    copy_project(dest)
    shutil.copytree(ROOT / "tests" / "slurm" / "profile", dest / "tests" / "slurm" / "profile")
    return dest


def copy_trained_model(tiny, work: Path) -> None:
    """Fold 0 of the session's tiny nnU-Net model (tests/conftest.py ``tiny_model``: dataset 900,
    the demo's plans and trainer), with its preprocessed and raw data, under resources/user: a
    trained model folder as a user brings it."""
    name = MODEL.split("/")[0]
    folder = tiny.model_folder
    assert folder.parts[-2:] == tuple(MODEL.split("/")), folder
    target = work / USER / "nnUNet_results" / MODEL
    target.mkdir(parents=True)
    for item in ("plans.json", "dataset.json", "dataset_fingerprint.json"):
        shutil.copy2(folder / item, target / item)
    shutil.copytree(folder / "fold_0", target / "fold_0")
    shutil.copytree(tiny.preprocessed, work / USER / "nnUNet_preprocessed" / name)
    shutil.copytree(tiny.preprocessed.parents[1] / "raw" / name, work / USER / "nnUNet_raw" / name)


def reduce_config(workdir: Path) -> None:
    """The shipped config, shortened: the trained model of resources/user (one fold) instead of
    the demo models, the demo's data stages on the tiny model's dataset (10 cases, seed 3), one
    INT8 variant, ONNX Runtime only,
    tiny benchmarks without sweep, no TorchScript export and no whole-case parity (both run in
    tests/test_workflow.py; here they would be three more jobs in the chain).

    ``benchmark.threads: 1`` makes a benchmark job need one of the node's two CPUs, so only the
    profile's ``bench=1`` keeps two of them from running side by side.
    """
    path = workdir / "config" / "config.yaml"
    config = yaml.safe_load(path.read_text())
    name = MODEL.split("/")[0]
    config["demo"].update(n_cases=10, seed=3, epochs=1, iterations=2)  # the tiny model's dataset
    config["models"] = [{"folder": f"{USER}/nnUNet_results/{MODEL}", "folds": [0],
                         "preprocessed": f"{USER}/nnUNet_preprocessed/{name}", "raw": f"{USER}/nnUNet_raw/{name}"}]
    config["patches"].update(calibration=4, heldout=2)
    config["validate"]["threads"] = 2  # Slurm must get what the config says
    config["benchmark"].update(threads=1, warmup=0, repeats=2, sweep=[])
    config["backends"] = ["onnxruntime"]  # OpenVINO runs are covered by the local workflow test
    config["quantize"] = {"int8_static": config["quantize"]["int8_static"]}  # one is enough here
    config["validate"]["tolerances"] = {k: v for k, v in config["validate"]["tolerances"].items()
                                        if k in ("torchscript", "onnx_fp32", "onnx_simplified", *config["quantize"])}
    config["benchmark"]["tune"] = []
    config["benchmark"]["realistic"] = {"enabled": False}
    config["bundle"] = {"variants": ["onnx_simplified"]}
    config["case_parity"].update(variants=[], tolerances={})  # whole cases: tests/test_workflow.py
    config["export"]["torchscript"] = False  # TorchScript export and its timing: tests/test_workflow.py
    path.write_text(yaml.safe_dump(config, sort_keys=False))


def run(workdir: Path, args: list[str], timeout: float) -> tuple[subprocess.CompletedProcess, float]:
    """snakemake ``args`` in ``workdir`` with the copy's own nnbridge on PYTHONPATH; (proc, seconds)."""
    env = dict(os.environ, PYTHONPATH=str(workdir / "src"))
    start = time.monotonic()
    try:
        proc = subprocess.run([SNAKEMAKE, *args], cwd=workdir, env=env, capture_output=True,
                              text=True, timeout=timeout)
    except subprocess.TimeoutExpired as error:
        cancel_jobs_in(workdir)
        out = error.stdout.decode() if isinstance(error.stdout, bytes) else (error.stdout or "")
        err = error.stderr.decode() if isinstance(error.stderr, bytes) else (error.stderr or "")
        raise AssertionError(f"snakemake {' '.join(args)} still running after {timeout} s:\n"
                             f"{out[-3000:]}\n{err[-6000:]}") from None
    return proc, time.monotonic() - start


def run_on_slurm(workdir: Path, *args: str, timeout: float = 1200) -> tuple[subprocess.CompletedProcess, float]:
    # --workflow-profile none: else profiles/default is loaded too and replaces default-resources
    return run(workdir, ["--profile", str(workdir / "tests/slurm/profile"), "--workflow-profile", "none",
                         *args], timeout)


def cancel_jobs_in(workdir: Path) -> None:
    """scancel the Slurm jobs running in ``workdir`` (a run the test gave up on)."""
    out = subprocess.run(["squeue", "-h", "-o", "%i %Z"], capture_output=True, text=True).stdout
    ids = [line.split()[0] for line in out.splitlines()
           if len(line.split()) == 2 and line.split()[1].startswith(str(workdir))]
    if ids:
        subprocess.run(["scancel", *ids], capture_output=True)


def job_blocks(text: str) -> dict[str, dict]:
    """Snakemake's job printouts: jobid -> {rule, local, threads, resources}."""
    jobs = {}
    for match in re.finditer(r"^(local)?rule (\w+):\n((?:[ \t]+.*(?:\n|$))*)", text, re.M):
        fields = dict(re.findall(r"^\s+(\w+): (.*)$", match.group(3), re.M))
        resources = dict(item.partition("=")[::2] for item in fields.get("resources", "").split(", ") if item)
        jobs[fields["jobid"]] = {"rule": match.group(2), "local": bool(match.group(1)),
                                 "threads": int(fields.get("threads", 1)), "resources": resources}
    return jobs


def submissions(text: str) -> dict[str, dict]:
    """Snakemake jobid -> {slurm_id, log} from the plugin's 'has been submitted' lines."""
    return {m.group(1): {"slurm_id": m.group(2), "log": Path(m.group(3))}
            for m in re.finditer(r"Job (\d+) has been submitted with SLURM jobid (\d+) \(log: (.+?)\)\.", text)}


def jobcomp_records() -> dict[str, dict[str, str]]:
    """Slurm's record of every finished job (jobcomp/filetxt): JobId -> fields."""
    records = {}
    for line in (JOBCOMP.read_text() if JOBCOMP.exists() else "").splitlines():
        fields = dict(re.findall(r"(\w+)=(\S*)", line))
        if "JobId" in fields:
            records[fields["JobId"]] = fields
    return records


def tres_mem_mb(tres: str) -> int:
    mem = dict(item.split("=", 1) for item in tres.split(","))["mem"]
    return int(float(mem[:-1]) * {"M": 1, "G": 1024, "T": 1024**2}[mem[-1]])


def when(stamp: str) -> datetime:
    return datetime.fromisoformat(stamp)


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def wait_for_jobcomp(slurm_ids: set[str], timeout: float = 30) -> dict[str, dict[str, str]]:
    deadline = time.monotonic() + timeout
    records = jobcomp_records()
    while not slurm_ids <= set(records) and time.monotonic() < deadline:
        time.sleep(1)
        records = jobcomp_records()
    return records


# --------------------------------------------------------------------------------------------
# fixtures


@pytest.fixture(scope="module")
def cluster():
    """A running one-node Slurm cluster (tests/slurm/cluster.sh); skip when there is none."""
    if os.environ.get("NNBRIDGE_SKIP_SLURM") == "1":
        pytest.skip("NNBRIDGE_SKIP_SLURM=1")
    was_running = subprocess.run(["bash", str(CLUSTER_SH), "status"], capture_output=True).returncode == 0
    # jobs left on the test partition by an interrupted earlier run (their snakemake is gone)
    # would hold the only node for their whole time limit
    if was_running:
        subprocess.run(["scancel", "--partition", PARTITION, "--user", getpass.getuser()],
                       capture_output=True, timeout=60)
    proc = subprocess.run(["bash", str(CLUSTER_SH), "start"], capture_output=True, text=True, timeout=900)
    if proc.returncode != 0:
        lines = (proc.stderr.strip() or proc.stdout.strip() or "cluster.sh start failed").splitlines()
        pytest.skip(f"no local Slurm cluster: {lines[-1]}")
    yield STATE
    if not was_running:
        subprocess.run(["bash", str(CLUSTER_SH), "stop"], capture_output=True, timeout=120)


@pytest.fixture(scope="module")
def slurm_run(cluster, tiny_model, tmp_path_factory: pytest.TempPathFactory):
    """The reduced pipeline run through Slurm.

    Its demo stages make the dataset of the session's tiny model (tests/conftest.py ``tiny_model``:
    the same ``make_dataset``, nnU-Net planning and preprocessing, ``derive_small_plans`` and
    splits, run locally), so that local run is the reference of the deterministic part.
    Returns (slurm workdir, snakemake output, seconds, {"nnUNet_raw" | "nnUNet_preprocessed":
    the tiny model's dataset folder there}).
    """
    work = copy_slurm_project(tmp_path_factory.mktemp("slurm_pipeline"))
    copy_trained_model(tiny_model, work)
    reduce_config(work)
    name = MODEL.split("/")[0]
    reference = {"nnUNet_raw": tiny_model.preprocessed.parents[1] / "raw" / name,
                 "nnUNet_preprocessed": tiny_model.preprocessed}
    assert tiny_model.preprocessed.name == name, tiny_model.preprocessed
    proc, seconds = run_on_slurm(work, "all", *REFERENCE_TARGETS)
    text = proc.stdout + proc.stderr
    if proc.returncode != 0:
        raise AssertionError(f"snakemake on Slurm failed after {seconds:.0f} s:\n{text[-8000:]}")
    print(f"\nslurm pipeline run: {seconds:.0f} s")
    return work, text, seconds, reference


@pytest.fixture(scope="module")
def slurm_jobs(slurm_run):
    """The run's Slurm jobs: [(rule, snakemake job printout, submission, jobcomp record)]."""
    _, text, _, _ = slurm_run
    run_id = re.search(r"SLURM run ID: (\S+)", text).group(1)
    jobs = job_blocks(text)
    remote = {jobid: job for jobid, job in jobs.items() if not job["local"]}
    submitted = submissions(text)
    # every job that snakemake did not run itself (localrules) went through sbatch
    assert set(submitted) == set(remote), (sorted(submitted), sorted(remote))
    assert {job["rule"] for job in jobs.values() if job["local"]} >= {"report"}
    records = wait_for_jobcomp({s["slurm_id"] for s in submitted.values()})
    out = []
    for jobid, sub in sorted(submitted.items(), key=lambda item: int(item[1]["slurm_id"])):
        job, record = remote[jobid], records.get(sub["slurm_id"])
        assert record is not None, f"Slurm has no record of job {sub['slurm_id']} ({job['rule']})"
        assert record["Name"] == run_id, record
        out.append((job["rule"], job, sub, record))
    return out


# --------------------------------------------------------------------------------------------
# tests


def test_every_job_ran_in_slurm_with_the_rules_resources(slurm_run, slurm_jobs):
    _, text, _, _ = slurm_run
    # only our profile: profiles/default would replace its default-resources (partition included)
    assert "Using profile" in text and "workflow specific profile" not in text, text[:2000]
    assert {rule for rule, *_ in slurm_jobs} >= {
        "demo_dataset", "demo_preprocess", "demo_plans", "export_onnx", "patches",
        "simplify", "quantize", "reference", "validate", "benchmark_artifact", "benchmark", "machine_peak"}
    for rule, job, sub, record in slurm_jobs:
        what = f"{rule} (Slurm job {sub['slurm_id']}): {record}"
        assert record["JobState"] == "COMPLETED", what
        # the rule really ran inside that Slurm job (the profile keeps the Slurm logs)
        assert sub["log"].is_file() and f"rule {rule}:" in sub["log"].read_text(), sub["log"]
        # what snakemake computed for the job is what Slurm allocated: CPUs = threads,
        # --mem = mem_mb, --time = runtime, and the profile's partition (not the default one)
        assert record["Partition"] == PARTITION, what
        assert int(record["ProcCnt"]) == job["threads"], what
        assert tres_mem_mb(record["Tres"]) == int(job["resources"]["mem_mb"]), what
        assert record["TimeLimit"] == job["resources"]["runtime"], what
    # ... and those come from the rules and the config: validate takes validate.threads (2),
    # reference one thread; both declare 6000 MB
    for rule, cpus in (("reference", 1), ("validate", 2)):
        allocated = {(int(r["ProcCnt"]), tres_mem_mb(r["Tres"])) for name, _, _, r in slurm_jobs if name == rule}
        assert allocated == {(cpus, 6000)}, (rule, allocated)


def test_benchmarks_never_overlapped(slurm_jobs):
    spans = sorted((when(r["StartTime"]), when(r["EndTime"])) for rule, _, _, r in slurm_jobs
                   if rule in ("benchmark_artifact", "benchmark", "machine_peak"))
    # the peak measurement of the run, 4 artifacts (torch eager, ONNX fp32 and simplified,
    # int8_static) timed once for the model, and the fold's benchmark
    assert len(spans) == 1 + 4 + len(FOLDS), spans
    for (_, end), (start, _) in zip(spans, spans[1:]):
        assert start >= end, spans


def test_artifacts_exist_and_exact_variants_pass_parity(slurm_run):
    work = slurm_run[0]
    assert (work / "results/report.html").stat().st_size > 1000
    for fold in FOLDS:
        base = work / "results" / MODEL / f"fold_{fold}"
        assert not (base / "export/model.ts").exists()  # export.torchscript: false
        for artifact in ("export/model.onnx", "simplify/model.onnx",
                         "quantize/int8_static.onnx", "benchmark/benchmark.json"):
            assert (base / artifact).stat().st_size > 100, artifact
        variants = json.loads((base / "validate/parity.json").read_text())["variants"]
        for exact in EXACT_VARIANTS:
            assert variants[exact]["passed"], (fold, exact, variants[exact])


def test_deterministic_artifacts_equal_a_local_run(slurm_run):
    """Synthetic data, nnU-Net planning/preprocessing, plans and splits are the same as locally.

    Byte for byte, except the preprocessed images (.b2nd): blosc2 containers of equal arrays
    differ in their bytes from run to run, so those are compared by dtype, shape and values.
    """
    import blosc2
    import numpy as np

    work, _, _, reference = slurm_run
    compared = 0
    for sub, folder in reference.items():
        for path in sorted(folder.rglob("*")):
            if not path.is_file():
                continue
            twin = work / "resources/demo" / sub / folder.name / path.relative_to(folder)
            assert twin.is_file(), twin
            if path.suffix == ".b2nd":
                a, b = blosc2.open(str(path), mode="r")[:], blosc2.open(str(twin), mode="r")[:]
                assert a.dtype == b.dtype and a.shape == b.shape and np.array_equal(a, b), twin
            else:
                assert digest(twin) == digest(path), f"differs from the local run: {twin}"
            compared += 1
    assert compared >= 20, compared


def test_failing_job_is_reported_quickly(cluster, tmp_path: Path):
    (tmp_path / "Snakefile").write_text(
        'rule fail:\n    output: "never.txt"\n    shell: "echo failing on purpose; exit 1"\n')
    shutil.copytree(ROOT / "tests" / "slurm" / "profile", tmp_path / "profile")
    proc, seconds = run(tmp_path, ["--profile", str(tmp_path / "profile"), "--workflow-profile", "none"],
                        timeout=300)
    text = proc.stdout + proc.stderr
    print(f"\nfailing job reported after {seconds:.1f} s")
    assert proc.returncode != 0, text[-3000:]
    assert "Error in rule fail" in text, text[-3000:]
    subs = submissions(text)
    assert len(subs) == 1, text[-3000:]
    slurm_id = next(iter(subs.values()))["slurm_id"]
    assert f"SLURM-job '{slurm_id}' failed" in text, text[-3000:]
    record = wait_for_jobcomp({slurm_id})[slurm_id]
    assert record["JobState"] == "FAILED" and record["ExitCode"] != "0:0", record
    assert seconds < 60, f"snakemake needed {seconds:.0f} s to report the failed job"
