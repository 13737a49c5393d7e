"""Typed records, and the report as a person reads it, on the records of a finished demo run
(tests/data/demo_run: two folds of the demo nnU-Net model with its bundle and whole-case parity, the
plain U-Net, the realistic-size benchmark; see tests/data/README.md). The rendered HTML is checked
in headless Chromium: every chart fully on screen, every section reachable from the contents."""

from __future__ import annotations

import json
import shutil
import statistics
from pathlib import Path

import numpy as np
import pytest

from nnbridge.core.records import RECORDS, BenchmarkRecord, RecordError
from nnbridge.report.collect import StageFailure
from nnbridge.report.render import build_report

DATA = Path(__file__).parent / "data" / "demo_run"
DATASET = "Dataset900_NNBridgeDemo"
NNUNET = "nnBridgeDemoTrainer__nnBridgeDemoPlans__3d_fullres"
PLAIN = "demo_unet"
KINDS = {"export.json": "export", "torchscript.json": "torchscript", "simplify.json": "simplify",
         "parity.json": "parity", "benchmark.json": "benchmark", "case_parity.json": "case_parity",
         "bundle.json": "bundle", "realistic.json": "realistic"}


def demo_entries(root: Path = DATA) -> list[dict]:
    """The report entries the workflow passes for the demo run (get_report_entries), on ``root``."""
    results = root / "results" / DATASET
    validation = root / "resources/demo/nnUNet_results" / DATASET / NNUNET
    entries = []
    for model, folds, kind in ((NNUNET, ("0", "1"), "nnunet"), (PLAIN, ("0",), "pytorch")):
        for fold in folds:
            base = results / model / f"fold_{fold}"
            nnunet = kind == "nnunet"
            entries.append({
                "dataset": DATASET, "model": model, "fold": fold, "kind": kind,
                "export": str(base / "export/export.json"), "torchscript": str(base / "export/torchscript.json"),
                "simplify": str(base / "simplify/simplify.json"),
                "quantize": {q.stem: str(q) for q in sorted((base / "quantize").glob("*.json"))},
                "parity": str(base / "validate/parity.json"), "benchmark": str(base / "benchmark/benchmark.json"),
                "validation_summary": str(validation / f"fold_{fold}/validation/summary.json") if nnunet else None,
                "case_parity": str(base / "case_parity/case_parity.json") if nnunet else None,
                "bundle": str(results / model / "bundle/bundle.json") if nnunet else None})
    return entries


def _build(entries: list[dict], out: Path, **kwargs) -> tuple[str, str]:
    kwargs.setdefault("realistic_path", DATA / "results/realistic/realistic.json")
    build_report(entries, md_path=out / "report.md", html_path=out / "report.html", charts_dir=out / "report/charts",
                 summary_path=out / "report/summary.json", **kwargs)
    return (out / "report.md").read_text(), (out / "report.html").read_text()


@pytest.fixture(scope="module")
def demo_report(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("demo_report")
    _build(demo_entries(), out)
    return out


def _raw(relative: str) -> dict:
    return json.loads((DATA / "results" / DATASET / relative).read_text())


# ---- typed records ----------------------------------------------------------------------------


def test_records_read_and_write_every_stage_file_losslessly(tmp_path):
    """Every record of the demo run reads as its kind and writes back to the same JSON, key order
    included: fields nobody typed (deep detail, fields added by other stages) survive."""
    files = sorted(p for p in (DATA / "results").rglob("*.json"))
    assert len(files) == 33
    for path in files:
        kind = KINDS.get(path.name) or ("quantize" if path.parent.name == "quantize" else None)
        raw = json.loads(path.read_text())
        record = RECORDS[kind].read(path)
        assert list(raw)[:2] == ["record", "schema_version"] and raw["record"] == kind
        assert json.dumps(record.to_dict()) == json.dumps(raw), path
    # a field a stage adds later is kept as written, and a typed field reads as its type
    raw = _raw(f"{NNUNET}/fold_0/benchmark/benchmark.json")
    raw["results"]["onnx_fp32"]["energy_joules"] = 0.25
    raw["new_section"] = {"a": [1, 2]}
    BenchmarkRecord.load(raw, "b.json").write(tmp_path / "b.json")
    again = BenchmarkRecord.read(tmp_path / "b.json")
    fp32 = next(r for v, r in again.results.items() if v.key == "onnx_fp32")
    assert fp32.extra["energy_joules"] == 0.25 and again.extra["new_section"] == {"a": [1, 2]}
    assert fp32.p50_ms == raw["results"]["onnx_fp32"]["p50_ms"] and fp32.backend == "onnxruntime"
    ov = [v for v in again.results if v.backend == "openvino"]
    assert {v.key for v in ov} == {k for k in raw["results"] if k.endswith("@openvino")}


def test_old_foreign_or_broken_records_give_one_line_with_the_fix(tmp_path):
    benchmark = _raw(f"{NNUNET}/fold_0/benchmark/benchmark.json")
    cases = [
        ({k: v for k, v in benchmark.items() if k not in ("record", "schema_version")},
         "written by an nnbridge older than typed records); rerun the stage: snakemake --forcerun benchmark"),
        ({**benchmark, "schema_version": 0},
         "a benchmark record of schema version 0, older than this nnbridge's 1; rerun the stage: "
         "snakemake --forcerun benchmark"),
        ({**benchmark, "schema_version": 7},
         "newer than this nnbridge reads (1); update nnbridge, or rerun the stage: snakemake --forcerun benchmark"),
        (_raw(f"{NNUNET}/fold_0/validate/parity.json"),
         "a 'parity' record where a 'benchmark' record belongs; rerun the stage: snakemake --forcerun benchmark"),
        ({**benchmark, "record": "weather"}, "an unknown 'weather' record where a 'benchmark' record belongs"),
        ({k: v for k, v in benchmark.items() if k != "results"},
         "the benchmark record has no 'results'; rerun the stage: snakemake --forcerun benchmark"),
    ]
    for data, message in cases:
        path = tmp_path / "benchmark.json"
        path.write_text(json.dumps(data))
        with pytest.raises(RecordError) as info:
            BenchmarkRecord.read(path)
        assert str(info.value).startswith(f"{path}: ") and message in str(info.value), str(info.value)
        assert "\n" not in str(info.value)
    path.write_text('{"record": "benchmark", ')
    with pytest.raises(RecordError, match=r"benchmark.json: not valid JSON .*snakemake --forcerun benchmark$"):
        BenchmarkRecord.read(path)
    # inside a record: the field that is wrong, by where it sits
    bad = {**benchmark, "results": {"onnx_fp32": {"p50_ms": 1.0}}, "tuning": {"onnx_fp32": {"candidates": []}}}
    path.write_text(json.dumps(bad))
    with pytest.raises(RecordError, match="has no 'chosen' in tuning.onnx_fp32; rerun the stage"):
        BenchmarkRecord.read(path)
    # the report stops on such a file with the same line, naming it
    work = tmp_path / "run"
    shutil.copytree(DATA, work)
    old = work / "results" / DATASET / PLAIN / "fold_0/validate/parity.json"
    old.write_text(json.dumps({k: v for k, v in json.loads(old.read_text()).items() if k != "schema_version"}))
    with pytest.raises(RecordError, match=rf"^{old}: not a stamped nnbridge record .* --forcerun validate$"):
        _build(demo_entries(work), tmp_path / "out")


# ---- the report -------------------------------------------------------------------------------


def _median_speedup(model: str, key: str) -> tuple[float, float]:
    """(median over folds of torch eager's p50 / this one's, median p50), from the raw benchmark JSON."""
    ratios, p50 = [], []
    for bench in sorted((DATA / "results" / DATASET / model).glob("fold_*/benchmark/benchmark.json")):
        results = json.loads(bench.read_text())["results"]
        ratios.append(results["torch_eager"]["p50_ms"] / results[key]["p50_ms"])
        p50.append(results[key]["p50_ms"])
    return statistics.median(ratios), statistics.median(p50)


def test_first_screen_says_what_to_deploy_and_how_fast_and_accurate(demo_report):
    md = (demo_report / "report.md").read_text()
    html = (demo_report / "report.html").read_text()
    summary = json.loads((demo_report / "report/summary.json").read_text())
    # nnU-Net model: among what the bundle ships, on the runtime the bundle chose, gate passed on
    # every fold: the fastest (from the raw records, not the report's code)
    bundle = _raw(f"{NNUNET}/bundle/bundle.json")
    gated = {}
    for name, entry in bundle["variants"].items():
        key = name if entry["backend"] == "onnxruntime" else f"{name}@{entry['backend']}"
        gates = [json.loads(p.read_text())["variants"][key] for p in
                 sorted((DATA / "results" / DATASET / NNUNET).glob("fold_*/validate/parity.json"))]
        if entry["passed"] and all(g["passed"] for g in gates):
            gated[key] = (_median_speedup(NNUNET, key), min(g["min_dice"] for g in gates), name, entry["backend"])
    best = min(gated, key=lambda k: gated[k][0][1])
    (speedup, p50), dice, name, backend = gated[best]
    runtime = {"onnxruntime": "ONNX Runtime", "openvino": "OpenVINO"}[backend]
    model = f"{DATASET} / {NNUNET}"
    assert f"### {model}\n\n**Deploy {name} on {runtime}** (2 fold(s): 0, 1)" in md
    assert f"| speed-up | **{speedup:.1f}× faster than PyTorch eager** — {p50:.1f} ms vs " in md
    assert f"| worst-class Dice vs PyTorch | **{dice:.4f}** — label maps on held-out patches; gate ≥ " in md
    cases = [json.loads(p.read_text())["variants"][name] for p in
             sorted((DATA / "results" / DATASET / NNUNET).glob("fold_*/case_parity/case_parity.json"))]
    agreement = min(c["min_voxel_agreement"] for c in cases)
    assert (f"| whole cases | **{100 * agreement:.3f} % of voxels agree** — with nnU-Net's predictor, "
            f"{sum(len(c['cases']) for c in cases)} case(s) in 2 fold(s)") in md
    assert f"nnbridge predict -m {DATA}/results/{DATASET}/{NNUNET}/bundle -i <images> -o <labels>" in md
    assert summary["deploy"][model]["variant"] == name and summary["deploy"][model]["runtime"] == backend
    # the plain U-Net: no bundle, so every gated variant×runtime competes; its file is named
    plain = json.loads((DATA / "results" / DATASET / PLAIN / "fold_0/validate/parity.json").read_text())["variants"]
    bench = json.loads((DATA / "results" / DATASET / PLAIN / "fold_0/benchmark/benchmark.json").read_text())["results"]
    fastest = min((k for k in plain if plain[k]["passed"] and "p50_ms" in bench.get(k, {})),
                  key=lambda k: bench[k]["p50_ms"])
    plain_name, _, plain_backend = fastest.partition("@")
    assert (f"### {DATASET} / {PLAIN}\n\n**Deploy {plain_name} on "
            f"{ {'': 'ONNX Runtime', 'openvino': 'OpenVINO'}[plain_backend] }** (1 fold(s): 0)") in md
    assert "| whole cases | **not compared** — a plain PyTorch model" in md
    assert f"results/{DATASET}/{PLAIN}/fold_0/" in md.split("## Contents")[0]
    # the first screen: title, verdict, then the cards; contents, charts and details after them
    order = [html.index(marker) for marker in ('id="verdict"', 'id="deployment"', 'class="toc"',
                                               '<section id="model-', 'id="details"')]
    assert order == sorted(order)
    assert html.count('class="card card-pass"') == 2
    assert md.index("## What to deploy") < md.index("## Contents") < md.index("## Speed and accuracy") \
        < md.index("## Overview")


def test_charts_per_model_show_everything(demo_report):
    """Each model has its own two charts, with exactly its own timed variants, nothing outside the
    axes and no two labels on top of each other."""
    from nnbridge.report.cards import model_card, model_points, pareto_front
    from nnbridge.report.collect import collect
    from nnbridge.report.plots import POINT_LABEL, clipped, dice_bars, speed_accuracy_chart

    charts = sorted(p.name for p in (demo_report / "report/charts").iterdir())
    assert charts == [f"dataset900-nnbridgedemo-{m}-{c}.png" for m in ("demo-unet", "nnbridgedemotrainer-"
                      "nnbridgedemoplans-3d-fullres") for c in ("dice", "speed-accuracy")]
    for model, folds in collect(demo_entries()).models().items():
        timed = {k for path in sorted((DATA / "results" / DATASET / folds[0].model).glob("fold_*/benchmark/*.json"))
                 for k, r in json.loads(path.read_text())["results"].items() if "p50_ms" in r}
        points = model_points(folds)
        card = model_card(model, "m", folds, points)
        fig = speed_accuracy_chart(model, points, pareto_front(points), card.deploy)
        assert clipped(fig) == [], model
        labels = [line.removesuffix(" ★").removesuffix(" (FAIL)") for t in fig.axes[0].texts
                  if t.get_gid() == POINT_LABEL for line in t.get_text().split("\n")]
        assert sorted(labels) == sorted(timed), model
        bars = dice_bars(model, points)
        assert clipped(bars) == [], model
        ticks = [t.get_text().split(" · ")[0] for t in bars.axes[0].get_yticklabels()]
        assert sorted(ticks) == sorted(timed - {"torch_eager"}), model


def test_partial_run_and_failed_stages(tmp_path):
    """A run that lost fold 1's benchmark and case parity still reports; the failed stages are listed
    one row each with their log; the card uses what there is."""
    entries = demo_entries()
    for entry in entries:
        if entry["model"] == NNUNET and entry["fold"] == "1":
            entry["benchmark"] = str(tmp_path / "never-written/benchmark.json")
            entry["case_parity"] = None
    failures = [StageFailure(f"{DATASET} / {NNUNET}", "1", "benchmark", "out of memory | killed", "logs/b.log"),
                StageFailure(f"{DATASET} / {NNUNET}", None, "bundle", "no variant passed", None)]
    md, html = _build(entries, tmp_path / "out", failures=failures)
    assert "**2 stage(s) FAILED** to run" in md
    assert "| Dataset900_NNBridgeDemo / nnBridgeDemoTrainer__nnBridgeDemoPlans__3d_fullres | 1 | benchmark | " \
           "out of memory \\| killed | logs/b.log |" in md
    assert "| – | bundle | no variant passed | – |" in md
    assert 'class="verdict verdict-fail"' in html and "out of memory | killed" in html
    assert "median of 2 fold(s)" not in md.split("### Dataset900_NNBridgeDemo / demo_unet")[0]
    assert "4 case(s) in 1 fold(s)" in md  # whole cases from fold 0 only
    summary = json.loads((tmp_path / "out/report/summary.json").read_text())
    assert summary["failed_stages"][0]["stage"] == "benchmark"


def test_an_openvino_ir_variant_in_the_report(tmp_path):
    """The demo run with an OpenVINO IR variant added as the default run now makes it (int8_ir:
    NNCF on OpenVINO's graph, .xml + .bin, OpenVINO only): the quantization table names its method,
    the benchmark table every result's load time, the bundle table marks it as an IR."""
    root = tmp_path / "run"
    shutil.copytree(DATA, root)
    results = root / "results" / DATASET / NNUNET
    for fold in ("0", "1"):
        base = results / f"fold_{fold}"
        record = json.loads((base / "quantize/int8_nncf.json").read_text())
        del record["coverage"]  # ONNX Runtime does not run an IR
        record.update(method="openvino_int8", path=str(base / "quantize/int8_ir.xml"), sha256="a" * 64 + "+" + "b" * 64)
        (base / "quantize/int8_ir.json").write_text(json.dumps(record))
        parity = json.loads((base / "validate/parity.json").read_text())
        parity["variants"]["int8_ir@openvino"] = {**parity["variants"]["int8_nncf@openvino"], "kind": "ir",
                                                  "path": record["path"]}
        (base / "validate/parity.json").write_text(json.dumps(parity))
        bench = json.loads((base / "benchmark/benchmark.json").read_text())
        bench["results"]["int8_ir@openvino"] = {**bench["results"]["int8_nncf@openvino"], "load_ms": 12.34}
        (base / "benchmark/benchmark.json").write_text(json.dumps(bench))
    bundle = json.loads((results / "bundle/bundle.json").read_text())
    bundle["variants"]["int8_ir"] = {**bundle["variants"]["int8_accurate"], "kind": "ir",
                                     "files": {f: f"int8_ir/fold_{f}.xml" for f in ("0", "1")},
                                     "weights": {f: f"int8_ir/fold_{f}.bin" for f in ("0", "1")},
                                     "gates": {f: {"openvino": True} for f in ("0", "1")}}
    (results / "bundle/bundle.json").write_text(json.dumps(bundle))
    realistic = json.loads((DATA / "results/realistic/realistic.json").read_text())
    realistic["load_ms"] = {"onnx_fp32@openvino": 271.4, "fp32_ir@openvino": 139.6}
    (root / "results/realistic/realistic.json").write_text(json.dumps(realistic))
    md, _ = _build(demo_entries(root), tmp_path / "out", realistic_path=root / "results/realistic/realistic.json")
    quantization = md.split("## Quantization")[1].split("\n## ")[0]
    assert quantization.count("| int8_ir | NNCF post-training on the OpenVINO model, preset performance, OpenVINO IR |") == 2
    benchmark = md.split("## Benchmark")[1].split("\n## ")[0]
    assert "| p99 ms | load ms | peak RSS MB |" in benchmark
    assert benchmark.count("| int8_ir@openvino | 1x1x40x40x40 |") == 2
    assert all("| 12.3 |" in row for row in benchmark.splitlines() if "| int8_ir@openvino |" in row)
    assert "| int8_ir (OpenVINO IR) | 0, 1 |" in md
    assert "| p99 ms | load ms | speed-up vs torch eager |" in md  # the realistic table too
    assert "reads and compiles the fp32 graph in 271 ms (onnx_fp32@openvino) and 140 ms (fp32_ir@openvino)" in md


# ---- in a browser -----------------------------------------------------------------------------

LAYOUT_JS = """
(() => {
  const doc = document.documentElement;
  const charts = [...document.querySelectorAll("figure.chart img")].map(img => {
    const r = img.getBoundingClientRect();
    let clippedBy = null;
    for (let el = img.parentElement; el && el !== document.body; el = el.parentElement) {
      const s = getComputedStyle(el), b = el.getBoundingClientRect();
      if ((s.overflowX !== "visible" || s.overflowY !== "visible") &&
          (r.left < b.left - .5 || r.right > b.right + .5 || r.top < b.top - .5 || r.bottom > b.bottom + .5))
        clippedBy = el.tagName + "." + el.className;
    }
    return {id: img.closest("figure").id, left: r.left, right: r.right, top: r.top + scrollY, width: r.width,
            height: r.height, natural: [img.naturalWidth, img.naturalHeight], complete: img.complete, clippedBy};
  });
  const ids = new Set([...document.querySelectorAll("[id]")].map(e => e.id));
  const links = [...document.querySelectorAll("nav.toc a")].map(a => a.getAttribute("href"));
  const sections = [...document.querySelectorAll("section[id], details[id], figure[id], article[id]")].map(e => e.id);
  return {viewport: doc.clientWidth, scrollWidth: doc.scrollWidth, charts, links, sections,
          missing: links.filter(h => !h.startsWith("#") || !ids.has(decodeURIComponent(h.slice(1))))};
})()
"""


@pytest.fixture(scope="module")
def chromium() -> str:
    from cdp import install_chromium

    try:
        return install_chromium()
    except RuntimeError as exc:
        pytest.skip(f"no headless Chromium: {exc}")


def test_demo_report_in_chromium(demo_report, chromium, tmp_path):
    """One Chromium: at a desktop and a narrow width every chart is loaded, inside the page width,
    drawn at its own aspect ratio and cut by nothing; the page never scrolls sideways (wide tables
    scroll in their box); the full-page screenshot holds each chart pixel for pixel; every contents
    link targets a section and every section has one; following one opens its collapsed section."""
    from PIL import Image

    from cdp import Browser

    url = (demo_report / "report.html").as_uri()
    with Browser(chromium) as browser:
        for width in (1280, 760):
            browser.viewport(width, 900)
            browser.load(url)
            browser.evaluate("document.querySelectorAll('details').forEach(d => d.open = true)")
            layout = browser.evaluate(LAYOUT_JS)
            assert layout["scrollWidth"] <= layout["viewport"] == width, (width, layout["scrollWidth"])
            assert len(layout["charts"]) == 4
            for chart in layout["charts"]:
                assert chart["complete"] and chart["natural"][0] > 0, chart
                assert 0 <= chart["left"] and chart["right"] <= width, (width, chart)
                assert chart["clippedBy"] is None, chart
                ratio = chart["natural"][0] / chart["natural"][1]
                assert chart["width"] / chart["height"] == pytest.approx(ratio, rel=0.01), chart
                if width == 1280:  # room enough: shown at its own size, not shrunk
                    assert chart["width"] == chart["natural"][0], chart
            assert layout["missing"] == []
            assert set(layout["sections"]) <= {link[1:] for link in layout["links"]}
            assert {"verdict", "deployment", "details", "benchmark", "case-parity"} <= set(layout["sections"])
            if width == 1280:
                shot = tmp_path / "report.png"
                browser.screenshot(shot)
                screen = np.asarray(Image.open(shot).convert("RGB"), dtype=np.int16)
                assert screen.shape[1] == width
                for chart in layout["charts"]:  # the screenshot shows each chart's every pixel
                    name = chart["id"].removeprefix("model-").replace("-speed", "-speed-accuracy")
                    png = np.asarray(Image.open(demo_report / "report/charts" / f"{name}.png").convert("RGB"),
                                     dtype=np.int16)
                    top, left = round(chart["top"]), round(chart["left"])
                    crop = screen[top:top + png.shape[0], left:left + png.shape[1]]
                    assert crop.shape == png.shape, chart
                    assert np.abs(crop - png).mean() < 2.0, chart
        # a contents link to a collapsed section opens it and scrolls to it: clicked, or opened from outside
        browser.viewport(1280, 900)
        browser.load(url)
        where = ("(() => {{ const d = document.getElementById('{0}');"
                 " return [d.open, Math.round(d.getBoundingClientRect().top)]; }})()")
        assert browser.evaluate(where.format("profile"))[0] is False
        browser.evaluate("document.querySelector('nav.toc a[href=\\'#profile\\']').click()")
        opened, top = browser.evaluate(where.format("profile"))
        assert opened is True and abs(top) <= 2, (opened, top)
        browser.load("about:blank")
        browser.load(url + "#coverage")
        opened, top = browser.evaluate(where.format("coverage"))
        assert opened is True and abs(top) <= 2, (opened, top)
