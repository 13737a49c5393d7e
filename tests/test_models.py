"""Loading nnU-Net folds: strict weights, safe unpickling, clear errors."""

from __future__ import annotations

import pickle
import shutil

import pytest
import torch

from nnbridge.core.errors import NNBridgeError
from nnbridge.models.checkpoint import strip_prefixes, verify_state
from nnbridge.models.nnunet import load_checkpoint, load_nnunet_fold, total_stride


def test_fold_loads_with_every_tensor_verified(loaded_fold):
    assert loaded_fold.weight_check.ok
    assert loaded_fold.weight_check.n_tensors == len(loaded_fold.network.state_dict())
    assert loaded_fold.weight_check.summary().startswith("weights verified:")
    assert not loaded_fold.network.training
    assert loaded_fold.network.decoder.deep_supervision is False
    assert loaded_fold.num_outputs == 3  # background, sphere, box
    assert all(p % s == 0 for p, s in zip(loaded_fold.patch_size, loaded_fold.stride_multiple))


def test_network_holds_the_checkpoint_weights_not_random_ones(tiny_model, loaded_fold):
    checkpoint = load_checkpoint(tiny_model.model_folder / "fold_0" / tiny_model.checkpoint)
    state = loaded_fold.network.state_dict()
    for key, tensor in checkpoint["network_weights"].items():
        assert torch.equal(state[key], tensor), key


def test_planted_wrong_weight_is_named(loaded_fold):
    reference = {k: v.clone() for k, v in loaded_fold.weights.items()}
    key = sorted(reference)[3]
    reference[key] = reference[key] + 1e-3
    check = verify_state(loaded_fold.network, reference)
    assert not check.ok
    assert check.mismatched == [key]
    assert key in check.summary()


def test_missing_key_is_reported(loaded_fold):
    reference = dict(loaded_fold.weights)
    reference["decoder.extra.weight"] = torch.zeros(1)
    check = verify_state(loaded_fold.network, reference)
    assert check.missing == ["decoder.extra.weight"]
    assert not check.ok


def test_compiled_prefix_is_stripped():
    state = {"_orig_mod.encoder.w": torch.ones(1), "decoder.b": torch.zeros(1)}
    assert set(strip_prefixes(state)) == {"encoder.w", "decoder.b"}


def test_compiled_checkpoint_loads(tiny_model, tmp_path):
    folder = tmp_path / tiny_model.model_folder.name
    shutil.copytree(tiny_model.model_folder, folder)
    path = folder / "fold_0" / tiny_model.checkpoint
    checkpoint = torch.load(path, weights_only=False)
    checkpoint["network_weights"] = {f"_orig_mod.{k}": v for k, v in checkpoint["network_weights"].items()}
    torch.save(checkpoint, path)
    fold = load_nnunet_fold(folder, "0")
    assert fold.weight_check.ok


def test_arbitrary_pickle_is_refused(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("owned",))

    path = tmp_path / "evil.pth"
    torch.save({"network_weights": {}, "payload": Evil()}, path, pickle_module=pickle)
    with pytest.raises(NNBridgeError, match="refused by safe loading"):
        load_checkpoint(path)


def test_truncated_checkpoint_names_the_file(tiny_model, tmp_path):
    src = tiny_model.model_folder / "fold_0" / tiny_model.checkpoint
    broken = tmp_path / "checkpoint_final.pth"
    broken.write_bytes(src.read_bytes()[: src.stat().st_size // 2])
    with pytest.raises(NNBridgeError, match=str(broken)):
        load_checkpoint(broken)


def test_missing_fold_names_the_file(tiny_model):
    with pytest.raises(NNBridgeError, match="fold_7"):
        load_nnunet_fold(tiny_model.model_folder, "7")


def test_total_stride():
    assert total_stride([[1, 1, 1], [2, 2, 2], [1, 2, 2]]) == (2, 4, 4)
