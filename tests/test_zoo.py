"""The networks people train with MONAI and segmentation_models_pytorch, by configuration alone.

Each network of the zoo (nnbridge.demo.zoo: tiny, seeded, trained a dozen steps, saved in one of
the usual wrappings) is listed as a user lists it — class, init kwargs, channels, example size,
patches; no spatial multiple, no output index — and run through the pipeline's stages: load →
ONNX and TorchScript export with weight proofs → simplify → INT8 static and accuracy-aware →
parity of every variant on ONNX Runtime and OpenVINO against eager PyTorch. A stage that cannot
work for a network is SKIPPED with its cause; here none does (the records say so per stage).
"""

from __future__ import annotations

import inspect
import json
import math
import os
import textwrap
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper

from nnbridge.core.errors import NNBridgeError
from nnbridge.demo.zoo import STAGES, ZOO, prepare, run_entry
from nnbridge.export.onnx_export import export_onnx
from nnbridge.export.simplify import simplify_onnx
from nnbridge.export.graph_proof import carriers, verify_derived_graph
from nnbridge.export.weights import verify_onnx_weights
from nnbridge.models.loader import load_model
from nnbridge.pipeline.plan import discover_models

BY_NAME = {net.name: net for net in ZOO}
EXACT = ("torchscript", "onnx_fp32", "onnx_simplified", "onnx_fp32@openvino", "onnx_simplified@openvino")
INT8 = ("int8_static", "int8_accurate", "int8_static@openvino", "int8_accurate@openvino")


# the accuracy-aware loop (a quantization and two runtimes per trial) for the two MONAI
# checkpoints and one network per family (Segformer for the attention networks: UNETR's loop took
# 17 s of the suite); the others get static INT8 only (their entries' `quantize: [int8_static]`,
# as a user lists a model's variants), so the matrix stays fast
ACCURACY_AWARE = {"monai_unet", "monai_basicunetpp", "monai_segresnet", "smp_unet", "smp_segformer"}


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    """name → (config entry, stage records, folder), each network run once, when first asked.
    With NNBRIDGE_ZOO_RECORDS set, the records are written there at the end (the README's
    coverage table is rendered from them: scripts/zoo_coverage.py --from-records)."""
    root = tmp_path_factory.mktemp("zoo")
    runs: dict[str, tuple] = {}

    def get(name: str):
        if name not in runs:
            folder = root / name
            quantize = None if name in ACCURACY_AWARE else ["int8_static"]
            entry = prepare(BY_NAME[name], folder, quantize=quantize)
            runs[name] = (entry, run_entry(entry, folder), folder)
        return runs[name]

    yield get
    if os.environ.get("NNBRIDGE_ZOO_RECORDS"):
        Path(os.environ["NNBRIDGE_ZOO_RECORDS"]).write_text(json.dumps(
            {name: {"entry": e, "records": r, "folder": str(f)} for name, (e, r, f) in runs.items()}, default=str))


def _source(entry):
    return next(iter(discover_models([entry], quantize_names=["int8_static", "int8_accurate"]).values())).source("all")


def _plant(model: onnx.ModelProto, name: str, index: int = 0, delta: float = 1e-3) -> onnx.ModelProto:
    """A copy of ``model`` with one element of initializer ``name`` changed."""
    model = onnx.ModelProto.FromString(model.SerializeToString())
    init = next(i for i in model.graph.initializer if i.name == name)
    array = numpy_helper.to_array(init).copy()
    array.flat[index] += delta
    init.CopyFrom(numpy_helper.from_array(array, name))
    return model


@pytest.mark.parametrize("name", list(BY_NAME))
def test_network_runs_every_stage_by_configuration(zoo, name):
    entry, records, _ = zoo(name)
    assert not {"spatial_multiple", "output_index", "output_key", "dynamic_axes"} & set(entry)
    expected = set(STAGES) if name in ACCURACY_AWARE else set(STAGES) - {"int8_accurate"}
    assert set(records) == expected
    for stage, record in records.items():
        assert record["status"] in ("ok", "SKIPPED"), (stage, record)
        if record["status"] == "SKIPPED":  # a cause in one line, the other stages went on
            assert record["cause"] and "\n" not in record["cause"], (stage, record)
    for stage in ("load", "export_onnx", "simplify", "validate"):
        assert records[stage]["status"] == "ok", (stage, records[stage])
    assert records["load"]["weights"]["ok"]
    proof = records["export_onnx"]["weights"]
    assert proof["ok"] and proof["summary"].startswith("weights verified") and not proof["missing"]
    assert sum(proof["matched"].values()) == proof["n_tensors"] == len(proof["tensors"])
    simplified = records["simplify"]
    assert simplified["kept_simplified"] and simplified["weights"]["ok"], simplified
    if records["export_torchscript"]["status"] == "ok":
        assert records["export_torchscript"]["weights"]["ok"]
    variants = records["validate"]["variants"]
    int8 = INT8 if name in ACCURACY_AWARE else ("int8_static", "int8_static@openvino")
    assert set(variants) == {*EXACT, *int8}
    for variant in EXACT:  # exact variants pass their tight gates on both runtimes
        result = variants[variant]
        assert result.get("skipped") or result["passed"], (variant, result)
    for variant in int8:  # the INT8 gate is evaluated on both runtimes (its verdict is the CPU's)
        result = variants[variant]
        assert result.get("skipped") or 0.0 <= result["min_dice"] <= 1.0, (variant, result)


def test_done_when_monai_unet_from_dataparallel_with_prelu(zoo):
    """The issue's first checkpoint: UNet(num_res_units=1) saved from nn.DataParallel."""
    entry, records, _ = zoo("monai_unet")
    assert "module." in records["load"]["weights_origin"]
    proof = records["export_onnx"]["weights"]
    slopes = [k for k in proof["tensors"] if k.endswith("adn.A.weight")]
    assert len(slopes) == 6 and proof["summary"] == "weights verified: 26 tensors (name 20, reshaped 6)"
    assert all(proof["tensors"][k]["how"] == "reshaped" for k in slopes)
    assert records["export_onnx"]["spatial"]["spatial_multiple"] == [4, 4, 4]
    assert records["export_onnx"]["dynamic_axes"] == ["batch", "spatial"]
    assert records["export_torchscript"]["weights"]["summary"] == "weights verified: 26 tensors"
    assert records["simplify"]["weights"]["ok"]


def test_done_when_monai_basicunetplusplus_list_output_in_model_state_dict(zoo):
    """The issue's second checkpoint: forward returns a one-element list, saved as
    {"model_state_dict": ..., "epoch": 300}."""
    entry, records, _ = zoo("monai_basicunetpp")
    load = records["load"]
    assert "model_state_dict" in load["weights_origin"]
    assert load["output"]["returns"] == "list" and load["output"]["n"] == 1 and load["output"]["index"] == 0
    assert records["export_onnx"]["weights"]["summary"].startswith("weights verified")
    graph = onnx.load(records["export_onnx"]["path"]).graph
    assert [o.name for o in graph.output] == ["logits"]
    # MONAI pads odd sizes in Python: the trace holds at multiples of the total stride only
    assert records["export_onnx"]["spatial"]["spatial_multiple"] == [16, 16]
    assert "raised" in records["export_onnx"]["spatial"]


def test_planted_wrong_prelu_slope_is_caught(zoo):
    entry, records, folder = zoo("monai_unet")
    fold = load_model(_source(entry))
    export = onnx.load(str(folder / "export" / "model.onnx"))
    key = "model.1.submodule.0.conv.unit0.adn.A.weight"
    held = records["export_onnx"]["weights"]["tensors"][key]["initializers"][0]
    planted = _plant(export, held)
    proof = verify_onnx_weights(planted, fold.weights, prefix=fold.weights_prefix)
    assert not proof["ok"] and proof["missing"] == [key]
    assert proof["summary"] == f"weights NOT verified: first mismatching tensor {key}"
    # and in the simplified graph
    simplified = onnx.load(str(folder / "simplify" / "model.onnx"))
    name = next(n for n in (i.name for i in simplified.graph.initializer)
                if np.array_equal(numpy_helper.to_array(next(i for i in simplified.graph.initializer if i.name == n)).ravel(),
                                  fold.weights[key].numpy().ravel()))
    derived = verify_derived_graph(_plant(simplified, name), export, carriers(records["export_onnx"]["weights"]))
    assert not derived["ok"] and derived["missing"] == [held]  # the export's initializer holding the slope


def test_planted_wrong_batchnorm_mean_is_caught_kept_and_folded(zoo, tmp_path):
    """BatchNorm kept (by name), folded by onnxsim, folded by the exporter: a wrong running mean
    is caught in each form."""
    entry, records, folder = zoo("monai_attentionunet")
    fold = load_model(_source(entry))
    key = "model.0.conv.0.adn.N.running_mean"
    export = onnx.load(str(folder / "export" / "model.onnx"))
    assert records["export_onnx"]["weights"]["tensors"][key]["how"] == "name"
    proof = verify_onnx_weights(_plant(export, key), fold.weights)
    assert not proof["ok"] and proof["missing"] == [key]

    # onnxsim folded BatchNorm into the convolutions: the mean lives in the folded bias only
    simplified = onnx.load(str(folder / "simplify" / "model.onnx"))
    hit = records["simplify"]["weights"]["tensors"][key]
    assert hit["how"] == "folded" and hit["into"] == "BatchNormalization into Conv" and hit["exact"]
    derived = verify_derived_graph(_plant(simplified, hit["initializers"][0]), export)
    assert not derived["ok"] and key in derived["missing"]

    # folded by the exporter (export.fold_batchnorm): bit for bit with torch's arithmetic
    record = export_onnx(fold, tmp_path / "folded.onnx", fold_batchnorm=True)
    folded = record["weights"]["tensors"][key]
    assert folded["how"] == "folded" and "torch" in folded["arithmetic"], folded
    def n_batchnorms(path):
        return sum(n.op_type == "BatchNormalization" for n in onnx.load(str(path)).graph.node)

    # torch folds BatchNorm after a Conv (not after a ConvTranspose)
    assert record["weights"]["ok"] and n_batchnorms(tmp_path / "folded.onnx") < n_batchnorms(folder / "export" / "model.onnx")
    proof = verify_onnx_weights(_plant(onnx.load(str(tmp_path / "folded.onnx")), folded["initializers"][0]),
                                fold.weights, reference=onnx.load(str(folder / "export" / "model.onnx")))
    assert not proof["ok"] and key in proof["missing"]

    # a network whose BatchNorm mean is not the checkpoint's: its export is deleted
    with torch.no_grad():
        dict(fold.network.named_buffers())[key][0] += 0.25
    with pytest.raises(NNBridgeError, match=rf"weights NOT verified: first mismatching tensor {key}; .*deleted"):
        export_onnx(fold, tmp_path / "wrong.onnx")
    assert not (tmp_path / "wrong.onnx").exists()


def test_transposed_linear_weights_and_gathered_tables(zoo):
    """UNETR's Linear weights are transposed under MatMul; SwinUNETR's relative position tables
    are gathered and folded by onnxsim: found, and a planted value is caught."""
    entry, records, folder = zoo("monai_unetr")
    proof = records["export_onnx"]["weights"]
    transposed = [k for k, hit in proof["tensors"].items() if hit["how"] == "transposed"]
    assert transposed and all(proof["tensors"][k]["perm"] == [1, 0] for k in transposed)
    fold = load_model(_source(entry))
    export = onnx.load(str(folder / "export" / "model.onnx"))
    planted = verify_onnx_weights(_plant(export, proof["tensors"][transposed[0]]["initializers"][0], 5),
                                  fold.weights, proof["unused_at_inference"], prefix=fold.weights_prefix)
    assert planted["missing"] == [transposed[0]]

    _, records, folder = zoo("monai_swinunetr")
    gathered = {k: hit for k, hit in records["simplify"]["weights"]["tensors"].items()
                if k.endswith("relative_position_bias_table")}
    assert gathered and all(h["how"] == "folded" and "Gather" in h["ops"] for h in gathered.values())
    export = onnx.load(str(folder / "export" / "model.onnx"))
    simplified = onnx.load(str(folder / "simplify" / "model.onnx"))
    key, hit = next(iter(gathered.items()))
    derived = verify_derived_graph(_plant(simplified, hit["initializers"][0]), export, input_shape=(1, 1, 64, 64))
    assert key in derived["missing"]


class _SplitConv(torch.nn.Module):
    """Uses its weight as two halves (a Split node the exporter keeps and onnxsim folds into two
    initializers)."""

    def __init__(self) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.randn(4, 1, 3, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = self.w.split(2)
        return torch.cat([torch.nn.functional.conv2d(x, a, padding=1),
                          torch.nn.functional.conv2d(torch.relu(x), b, padding=1)], 1)


def test_split_weight_is_found_and_a_planted_piece_caught(tmp_path):
    torch.manual_seed(0)
    torch.save(_SplitConv().state_dict(), tmp_path / "split.pth")
    (tmp_path / "split.py").write_text("import torch\n\n" + __import__("inspect").getsource(_SplitConv)
                                       .replace("_SplitConv", "SplitConv"))
    source = {"kind": "pytorch", "name": "s", "checkpoint": str(tmp_path / "split.pth"),
              "class": f"{tmp_path / 'split.py'}:SplitConv", "init_kwargs": {}, "input_channels": 1,
              "example_size": [8, 8]}
    fold = load_model(source)
    record = export_onnx(fold, tmp_path / "split.onnx")
    assert record["weights"]["tensors"]["w"]["how"] == "name"
    patches = np.random.default_rng(0).normal(size=(2, 1, 8, 8)).astype(np.float32)
    simplified = simplify_onnx(tmp_path / "split.onnx", tmp_path / "sim.onnx", patches, export_record=record)
    hit = simplified["weights"]["tensors"]["w"]
    assert hit["how"] == "split" and hit["axis"] == 0 and [p["slice"] for p in hit["pieces"]] == [[0, 2], [2, 4]]
    planted = _plant(onnx.load(str(tmp_path / "sim.onnx")), hit["initializers"][1], 3)
    derived = verify_derived_graph(planted, onnx.load(str(tmp_path / "split.onnx")), ["w"])
    assert derived["missing"] == ["w"]


def test_fixed_size_networks_are_exported_with_a_fixed_spatial_size(zoo):
    _, records, _ = zoo("monai_unetr")
    spatial = records["export_onnx"]["spatial"]
    assert spatial["fixed_axes"] == [0, 1] and "runs at example_size [32, 32] only" in spatial["fixed"]
    assert records["export_onnx"]["dynamic_axes"] == ["batch"]
    dims = onnx.load(records["export_onnx"]["path"]).graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_param and [d.dim_value for d in dims[2:]] == [32, 32]
    # SwinUNETR runs at any multiple of 32 in PyTorch, but its trace holds the example size only
    _, records, _ = zoo("monai_swinunetr")
    assert records["load"]["spatial"]["spatial_multiple"] == [32, 32]
    assert "the traced graph holds the example size" in records["export_onnx"]["spatial"]["fixed"]
    assert records["export_onnx"]["dynamic_axes"] == ["batch"]


def test_swinunetr_exported_dynamic_runs_on_openvino_fixed_to_its_shape(tmp_path):
    """A MONAI SwinUNETR exported at 128² has dynamic spatial axes (at multiples of 64), and
    OpenVINO's CPU plugin cannot run that graph compiled dynamically at any size (its
    shifted-window mask's Add fails OpenVINO's shape inference; found at 512² and 96³): every
    OpenVINO run of the pipeline — the runners of validate, benchmark and predict, NNCF's IR
    quantization, the calibration on OpenVINO — compiles for the shape it runs, and the IR it
    writes keeps the file's dynamic input."""
    import dataclasses

    import openvino as ov

    from nnbridge.demo.zoo import build, model_entry, save_checkpoint
    from nnbridge.quantize.openvino_ir import quantize_openvino_int8
    from nnbridge.quantize.static import calibrate_on_openvino
    from nnbridge.runtime import make_runner
    from nnbridge.runtime.ort import run_onnx

    net = dataclasses.replace(BY_NAME["monai_swinunetr"], example_size=(128, 128))
    patches = np.random.default_rng(0).standard_normal((2, 1, 128, 128)).astype(np.float32)
    np.save(tmp_path / "patches.npy", patches)
    checkpoint = save_checkpoint(net, build(net).eval(), tmp_path / "model.pth")
    fold = load_model(_source(model_entry(net, checkpoint, tmp_path / "patches.npy", tmp_path / "patches.npy")))
    record = export_onnx(fold, tmp_path / "model.onnx", threads=2)
    assert record["dynamic_axes"] == ["batch", "spatial"] and record["spatial"]["spatial_multiple"] == [64, 64]
    core = ov.Core()  # what OpenVINO does with the dynamic graph as exported
    dynamic = core.compile_model(core.read_model(str(tmp_path / "model.onnx")), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    with pytest.raises(RuntimeError, match="shape infer"):
        dynamic({0: patches[:1]})

    reference = run_onnx(tmp_path / "model.onnx", patches, 2)
    run = make_runner({"backend": "openvino", "path": str(tmp_path / "model.onnx")}, 2)
    for batch in (patches, patches[:1], patches):  # a smaller last batch, then the first shape again
        logits = run(batch)
        assert np.abs(logits - reference[: len(batch)]).max() <= 1e-4 * np.abs(reference).max()

    calibrate_on_openvino(tmp_path / "model.onnx", patches, tmp_path / "ranges.json", threads=2)
    assert json.loads((tmp_path / "ranges.json").read_text())
    quantize_openvino_int8(tmp_path / "model.onnx", tmp_path / "int8.xml", patches, threads=2)
    assert not core.read_model(str(tmp_path / "int8.xml")).input(0).get_partial_shape().is_static
    int8 = make_runner({"backend": "openvino", "path": str(tmp_path / "int8.xml")}, 2)
    assert int8(patches).shape == reference.shape and int8(patches[:1]).shape == reference[:1].shape


def test_outputs_as_libraries_return_them(zoo, tmp_path):
    entry, records, _ = zoo("monai_basicunetpp_ds")
    output = records["load"]["output"]
    assert output["n"] == 4 and output["index"] == 3 and "the last of 4 outputs" in output["how"]
    # an explicit index, recorded as such
    fold = load_model({**_source(entry), "output_index": 0})
    assert fold.output["how"] == "output_index" and fold.output["index"] == 0
    with pytest.raises(NNBridgeError, match=r"`output_index: 7` does not name a tensor of the 4 outputs"):
        load_model({**_source(entry), "output_index": 7})

    class Heads(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = torch.nn.Conv2d(1, 2, 3, padding=1)

        def forward(self, x):
            y = self.conv(x)
            return {"logits": y, "aux": torch.nn.functional.avg_pool2d(y, 2)}

    (tmp_path / "heads.py").write_text("import torch\n\n" + textwrap.dedent(inspect.getsource(Heads)))
    torch.save(Heads().state_dict(), tmp_path / "heads.pth")
    source = {"kind": "pytorch", "name": "h", "checkpoint": str(tmp_path / "heads.pth"),
              "class": f"{tmp_path / 'heads.py'}:Heads", "init_kwargs": {}, "input_channels": 1,
              "example_size": [16, 16]}
    fold = load_model(source)
    assert fold.output["key"] == "logits" and fold.weights_prefix == "network."
    record = export_onnx(fold, tmp_path / "heads.onnx")
    assert record["weights"]["summary"] == "weights verified: 2 tensors"
    assert [o.name for o in onnx.load(str(tmp_path / "heads.onnx")).graph.output] == ["logits"]
    with pytest.raises(NNBridgeError, match=r"`output_key: aux2` is not a tensor entry"):
        load_model({**source, "output_key": "aux2"})

    class NoFullRes(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.scale = torch.nn.Parameter(torch.ones(1))

        def forward(self, x):
            return [torch.nn.functional.avg_pool2d(x * self.scale, 2)]

    (tmp_path / "nofull.py").write_text("import torch\n\n" + textwrap.dedent(inspect.getsource(NoFullRes)))
    torch.save(NoFullRes().state_dict(), tmp_path / "nofull.pth")
    with pytest.raises(NNBridgeError) as info:
        load_model({**source, "checkpoint": str(tmp_path / "nofull.pth"), "class": f"{tmp_path / 'nofull.py'}:NoFullRes"})
    message = str(info.value)
    assert "list of 1 outputs [[1, 1, 8, 8]], none at the input's spatial size [16, 16]" in message
    assert "set `output_index:`" in message and "deep supervision" not in message and "\n" not in message


def test_lightning_and_monai_saver_wrappings(zoo):
    _, records, _ = zoo("smp_unet")
    assert "prefix 'model.' removed" in records["load"]["weights_origin"]
    _, records, _ = zoo("monai_basicunet")
    assert "key 'net'" in records["load"]["weights_origin"]


def test_records_are_json_and_stage_times_recorded(zoo):
    _, records, _ = zoo("monai_unet")
    json.dumps(records)
    assert all(math.isfinite(r["stage_seconds"]["wall"]) for r in records.values())


def test_coverage_table_is_rendered_from_the_records(zoo):
    from nnbridge.report.zoo import MARKER_BEGIN, MARKER_END, coverage_table, replace_section

    _, records, _ = zoo("monai_unet")
    validate = records["validate"]["variants"]
    speed = {"results": {"torch_eager": {"p50_ms": 10.0}, "onnx_simplified@openvino": {"speedup_vs_torch_eager": 3.0},
                         "onnx_fp32": {"speedup_vs_torch_eager": 2.0}, "int8_static": {"speedup_vs_torch_eager": 5.0}}}
    table = coverage_table([{"name": "monai_unet", "library": "MONAI", "class": "UNet", "saved_as": "dataparallel",
                             "records": records, "speed": speed}])
    header, rule, row = table.splitlines()
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[0] == "MONAI `UNet` (monai_unet)" and cells[2] == "✓ 26 (name 20, reshaped 6)"
    assert cells[5] == "× 4" and cells[8] == "3.00× `onnx_simplified@openvino`"
    # the best INT8 counts only a variant that passed its gate
    assert cells[9] == ("5.00× `int8_static`" if validate["int8_static"]["passed"] else "none passed")
    text = replace_section(f"intro\n{MARKER_BEGIN}\nold\n{MARKER_END}\noutro\n", table)
    assert "old" not in text and text.startswith("intro") and text.rstrip().endswith("outro")
