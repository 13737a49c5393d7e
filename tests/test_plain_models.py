"""Plain PyTorch checkpoints (U-Net, UNet++): every saving style loads by configuration alone,
with the weights proven through export; unsafe or broken files are refused with their cause."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper

from nnbridge.demo.nets import NestedUNet, UNet
from nnbridge.core.errors import NNBridgeError
from nnbridge.core.metadata import read_metadata
from nnbridge.export.onnx_export import export_onnx
from nnbridge.export.torchscript_export import export_torchscript
from nnbridge.export.weights import verify_onnx_weights
from nnbridge.models.loader import load_model
from nnbridge.core.metadata import output_labels
from nnbridge.validate.reference import validate_source
from nnbridge.patches.sampling import copy_patch_sets, load_patches
from nnbridge.quantize import quantize_variant
from nnbridge.pipeline.plan import discover_models

KWARGS = {"in_channels": 1, "num_classes": 3, "features": [4, 8, 16]}
SIZE = [16, 16, 16]


def _net(cls: type, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    net = cls(**KWARGS)
    with torch.no_grad():  # non-trivial BatchNorm statistics, so buffers matter
        for module in net.modules():
            if isinstance(module, torch.nn.BatchNorm3d):
                module.running_mean.uniform_(-0.5, 0.5)
                module.running_var.uniform_(0.5, 2.0)
    return net.eval()


def _source(path: Path, cls: str = "nnbridge.demo.nets.UNet", **extra) -> dict:
    return {"kind": "pytorch", "name": "m", "checkpoint": str(path), "class": cls,
            "init_kwargs": KWARGS, "input_channels": 1, "example_size": SIZE,
            "spatial_multiple": 4, "fold": "all", **extra}


@pytest.fixture(scope="module")
def unet() -> torch.nn.Module:
    return _net(UNet)


def test_dataparallel_checkpoint_loads_with_every_tensor_verified(unet, tmp_path):
    path = tmp_path / "unet.pth"
    torch.save({"epoch": 3, "model_state_dict": {f"module.{k}": v for k, v in unet.state_dict().items()},
                "best_dice": np.float64(0.9)}, path)
    fold = load_model(_source(path))
    assert fold.weight_check.ok and fold.weight_check.n_tensors == len(unet.state_dict())
    assert "model_state_dict" in fold.weights_origin and "module." in fold.weights_origin
    for key, tensor in unet.state_dict().items():
        assert torch.equal(fold.network.state_dict()[key], tensor), key
    assert fold.num_outputs == 3 and fold.label_names == {0: "background", 1: "class_1", 2: "class_2"}


@pytest.mark.parametrize("wrapper", [None, "state_dict", "network_weights", "model"])
def test_every_wrapping_style_and_compiled_prefix(unet, tmp_path, wrapper):
    state = {f"_orig_mod.{k}": v for k, v in unet.state_dict().items()}
    path = tmp_path / "m.pth"
    torch.save(state if wrapper is None else {wrapper: state, "step": 1}, path)
    fold = load_model(_source(path))
    assert fold.weight_check.ok and "_orig_mod." in fold.weights_origin


def test_unetpp_export_carries_the_checkpoint_weights_and_metadata(tmp_path):
    net = _net(NestedUNet, seed=1)
    torch.save(net.state_dict(), tmp_path / "unetpp.pth")
    source = _source(tmp_path / "unetpp.pth", "nnbridge.demo.nets.NestedUNet",
                     labels={"background": 0, "sphere": 1, "box": 2})
    fold = load_model(source)
    record = export_onnx(fold, tmp_path / "model.onnx")
    assert record["weights"]["ok"], record["weights"]
    n_float = sum(1 for v in net.state_dict().values() if v.is_floating_point())
    # untrained BatchNorm scales/shifts of one width are equal: the exporter keeps one copy
    assert record["weights"]["summary"].startswith(f"weights verified: {n_float} tensors")
    assert set(record["weights"]["matched"]) <= {"name", "content"}
    assert [c["shape"] for c in record["shape_checks"]] == [[1, 1, 16, 16, 16], [1, 1, 12, 12, 12]]
    assert max(c["max_abs_err"] for c in record["shape_checks"]) < 1e-4
    meta = read_metadata(tmp_path / "model.onnx")
    assert meta["model_kind"] == "pytorch" and meta["model_class"] == "nnbridge.demo.nets.NestedUNet"
    assert json.loads(meta["init_kwargs"]) == KWARGS and meta["source_sha256"] == fold.checkpoint_sha256
    assert "plans" not in meta and json.loads(meta["versions"])["torch"] == torch.__version__
    assert output_labels(tmp_path / "model.onnx") == ({0: "background", 1: "sphere", 2: "box"}, False)
    ts = export_torchscript(fold, tmp_path / "model.ts")
    assert ts["weights"]["ok"] and max(c["max_abs_err"] for c in ts["shape_checks"]) < 1e-5

    # INT8 of the BatchNorm network: convolutions run in INT8, the gate measures it with labels
    patches = np.random.default_rng(0).normal(size=(4, 1, *SIZE)).astype(np.float32)
    quantized = quantize_variant(tmp_path / "model.onnx", tmp_path / "int8.onnx", patches,
                                 {"method": "static", "symmetric_activations": True},
                                 backends=("onnxruntime", "openvino"))
    assert quantized["coverage"]["n_int8_compute_nodes"] > 0
    assert quantized["coverage_openvino"]["n_compute_nodes"] > 0
    parity = validate_source(source, patches, {"int8": {"kind": "onnx", "path": str(tmp_path / "int8.onnx"),
                                                      "backend": "openvino"}}, {"int8": {"min_dice": 0.0}})
    assert set(parity["variants"]["int8"]["dice"]) == {"sphere", "box"}

    # a planted wrong weight in the exported graph is named
    model = onnx.load(str(tmp_path / "model.onnx"))
    init = next(i for i in model.graph.initializer if i.name in fold.weights)
    init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init) + 1e-3, init.name))
    proof = verify_onnx_weights(model, fold.weights)
    assert not proof["ok"] and proof["missing"] == [init.name]


def test_torchscript_archive_and_class_file_sources(unet, tmp_path):
    scripted = torch.jit.trace(unet, torch.zeros(1, 1, *SIZE))
    scripted.save(str(tmp_path / "unet.ts"))
    fold = load_model(_source(tmp_path / "unet.ts", None, format="torchscript"))
    assert fold.weight_check.ok and fold.weights_origin == "TorchScript archive"
    assert export_onnx(fold, tmp_path / "from_ts.onnx")["weights"]["ok"]

    # a class defined in a file (the usual tutorial layout), not an installed package
    code = Path(__file__).resolve().parents[1] / "src/nnbridge/demo/nets.py"
    (tmp_path / "mynets.py").write_text(code.read_text().replace("from ..", "from nnbridge."))
    torch.save(unet.state_dict(), tmp_path / "sd.pth")
    fold = load_model(_source(tmp_path / "sd.pth", f"{tmp_path / 'mynets.py'}:UNet"))
    assert fold.weight_check.ok


def test_pickled_model_needs_trust(unet, tmp_path):
    torch.save(unet, tmp_path / "full.pth")
    with pytest.raises(NNBridgeError, match="trusted: true"):
        load_model(_source(tmp_path / "full.pth", format="pickle"))
    fold = load_model(_source(tmp_path / "full.pth", format="pickle", trusted=True))
    assert fold.weight_check.ok and fold.weights_origin == "pickled module"
    # as a state dict it is refused by safe loading, with the key that trusts it
    with pytest.raises(NNBridgeError, match=r"full\.pth: refused by safe loading.*set `trusted: true`"):
        load_model(_source(tmp_path / "full.pth"))


class _Exploit:
    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def test_malicious_pickle_is_refused_without_running(tmp_path):
    marker = tmp_path / "pwned"
    torch.save({"state_dict": {"w": torch.zeros(1)}, "payload": _Exploit(str(marker))}, tmp_path / "evil.pth")
    with pytest.raises(NNBridgeError, match=r"evil\.pth: refused by safe loading") as info:
        load_model(_source(tmp_path / "evil.pth"))
    assert "\n" not in str(info.value) and "trusted: true" in str(info.value)
    assert not marker.exists()


def test_broken_checkpoints_name_the_file_and_the_fix(unet, tmp_path):
    good = tmp_path / "good.pth"
    torch.save(unet.state_dict(), good)
    truncated = tmp_path / "cut.pth"
    truncated.write_bytes(good.read_bytes()[:5000])
    with pytest.raises(NNBridgeError, match=r"cut\.pth: not a torch checkpoint \(corrupt or truncated"):
        load_model(_source(truncated))
    state = dict(unet.state_dict())
    del state["head.weight"]
    torch.save(state, tmp_path / "missing.pth")
    with pytest.raises(NNBridgeError, match=r"missing\.pth: weights do not fit .*head\.weight.*init_kwargs"):
        load_model(_source(tmp_path / "missing.pth"))
    with pytest.raises(NNBridgeError, match=r"weights do not fit"):  # shapes of another width
        load_model(_source(good, init_kwargs={**KWARGS, "features": [8, 16, 32]}))
    with pytest.raises(NNBridgeError, match=r"nope\.pth: checkpoint not found"):
        load_model(_source(tmp_path / "nope.pth"))
    with pytest.raises(NNBridgeError, match=r"cannot import 'no_such_pkg'"):
        load_model(_source(good, "no_such_pkg.UNet"))


def test_config_refuses_non_multiple_sizes_and_untrusted_pickles(tmp_path):
    entry = {k: v for k, v in _source(tmp_path / "m.pth", preprocessed=str(tmp_path),
                                      data_identifier="x").items() if k != "fold"}
    with pytest.raises(NNBridgeError, match=r"example_size \[18, 16, 16\] is not a multiple of "
                                            r"spatial_multiple \[4, 4, 4\]; use sizes divisible by"):
        discover_models([{**entry, "example_size": [18, 16, 16]}])
    with pytest.raises(NNBridgeError, match="format: pickle.*trusted: true"):
        discover_models([{**entry, "format": "pickle"}])
    with pytest.raises(NNBridgeError, match="either `preprocessed:`"):
        discover_models([{k: v for k, v in entry.items() if k != "preprocessed"}])
    with pytest.raises(NNBridgeError, match="'int8_x' is not in the config's quantize"):
        discover_models([{**entry, "quantize": ["int8_x"]}], quantize_names=["int8_accurate"])
    with pytest.raises(NNBridgeError, match=r"m\.pth: checkpoint missing"):  # inputs are checked before the run
        discover_models([entry], quantize_names=[])
    (tmp_path / "m.pth").write_bytes(b"x")
    (tmp_path / "splits_final.json").write_text("[]")
    model = discover_models([entry], quantize_names=[])["pytorch/m"]
    assert model.fold_keys()[0].label == "pytorch/m/fold_all"
    assert model.source("all")["class"] == "nnbridge.demo.nets.UNet"


def test_fixed_axes_sigmoid_model_through_patches_and_parity(unet, tmp_path):
    """A fixed-size export (no dynamic axes) of a sigmoid model with user-given patch arrays."""
    torch.save(unet.state_dict(), tmp_path / "m.pth")
    source = _source(tmp_path / "m.pth", dynamic_axes=[], output="sigmoid")
    fold = load_model(source)
    assert fold.region_based and fold.label_names == {0: "channel_0", 1: "channel_1", 2: "channel_2"}
    record = export_onnx(fold, tmp_path / "fixed.onnx")
    assert [c["shape"] for c in record["shape_checks"]] == [[1, 1, 16, 16, 16]]
    dims = onnx.load(str(tmp_path / "fixed.onnx")).graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_value for d in dims] == [1, 1, 16, 16, 16]
    rng = np.random.default_rng(0)
    np.save(tmp_path / "cal.npy", rng.normal(size=(3, 1, *SIZE)).astype(np.float32))
    np.save(tmp_path / "held.npy", rng.normal(size=(2, 1, *SIZE)).astype(np.float32))
    summary = copy_patch_sets(tmp_path / "cal.npy", tmp_path / "held.npy", tmp_path / "c.npz",
                              tmp_path / "h.npz", channels=1, spatial=tuple(SIZE), n_calibration=8,
                              n_heldout=8)
    assert summary["heldout"]["n"] == 2
    with pytest.raises(NNBridgeError, match=r"bad\.npy: patches of shape \(2, 3, 16, 16, 16\)"):
        np.save(tmp_path / "bad.npy", np.zeros((2, 3, *SIZE), np.float32))
        copy_patch_sets(tmp_path / "bad.npy", tmp_path / "held.npy", tmp_path / "x.npz", tmp_path / "y.npz",
                        channels=1, spatial=tuple(SIZE), n_calibration=1, n_heldout=1)
    parity = validate_source(source, load_patches(tmp_path / "h.npz"),
                           {"onnx_fp32": {"kind": "onnx", "path": str(tmp_path / "fixed.onnx")}},
                           {"onnx_fp32": {"max_rel_err": 1e-4, "min_dice": 0.999}})
    assert parity["variants"]["onnx_fp32"]["passed"], parity["variants"]["onnx_fp32"]
    assert parity["labels"] == {"0": "channel_0", "1": "channel_1", "2": "channel_2"}


class _ScaledConv(torch.nn.Module):
    """Uses its weight only in transformed form: the export bakes ``2 * w`` into the graph."""

    def __init__(self) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.randn(2, 1, 3, 3, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.conv3d(x, self.w * 2, padding=1)


def test_constant_folded_weight_is_proven_and_an_unproven_export_is_deleted(tmp_path):
    torch.save(_ScaledConv().state_dict(), tmp_path / "scaled.pth")
    (tmp_path / "scaled.py").write_text(
        "import torch\n\n" + __import__("inspect").getsource(_ScaledConv).replace("_ScaledConv", "ScaledConv"))
    source = {**_source(tmp_path / "scaled.pth", f"{tmp_path / 'scaled.py'}:ScaledConv"), "init_kwargs": {}}
    fold = load_model(source)
    # the exporter folds 2 * w into one initializer: found by replaying the unfolded graph's
    # constant subgraph on the checkpoint's w, bit for bit
    record = export_onnx(fold, tmp_path / "model.onnx")
    hit = record["weights"]["tensors"]["w"]
    assert hit["how"] == "folded" and hit["into"] == "constant folding" and hit["ops"] == ["Mul"] and hit["exact"]
    # a network that no longer carries the checkpoint's w: the export is deleted, naming it
    with torch.no_grad():
        fold.network.w.add_(1e-3)
    with pytest.raises(NNBridgeError, match=r"model\.onnx: weights NOT verified: first mismatching tensor w; .*deleted"):
        export_onnx(fold, tmp_path / "model.onnx")
    assert not (tmp_path / "model.onnx").exists()
