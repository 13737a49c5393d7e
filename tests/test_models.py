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


# ------------------------------------------------------------------------------------------------
# the network of a trainer whose source proves it uses nnU-Net's default builder is built without
# importing the trainer (nnbridge.models.trainer_source); any other trainer's class is imported

PLANTED = {
    "mixins.py": "class Quiet:\n    verbose = False\n",
    "nnUNetTrainerPlainX.py": (
        "from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer\n"
        "from mixins import Quiet\n\n\n"
        "class nnUNetTrainerPlainX(Quiet, nnUNetTrainer):\n"
        "    def __init__(self, *args, **kwargs):\n"
        "        super().__init__(*args, **kwargs)\n"
        "        self.num_epochs = 3\n\n\n"
        "class nnUNetTrainerPlainXChild(nnUNetTrainerPlainX):\n"
        "    pass\n"),
    # the same weights, another network: LeakyReLU -> ReLU (a strict load cannot tell)
    "nnUNetTrainerReLU.py": (
        "import torch\n"
        "from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer\n"
        "from nnunetv2.utilities.get_network_from_plans import get_network_from_plans\n\n\n"
        "class nnUNetTrainerReLU(nnUNetTrainer):\n"
        "    @staticmethod\n"
        "    def build_network_architecture(plans_manager, configuration_manager, num_input_channels,\n"
        "                                   num_output_channels, enable_deep_supervision=True):\n"
        "        kwargs = dict(configuration_manager.network_arch_init_kwargs)\n"
        "        kwargs['nonlin'] = 'torch.nn.ReLU'\n"
        "        return get_network_from_plans(configuration_manager.network_arch_class_name, kwargs,\n"
        "                                      configuration_manager.network_arch_init_kwargs_req_import,\n"
        "                                      num_input_channels, num_output_channels, allow_init=True,\n"
        "                                      deep_supervision=enable_deep_supervision)\n\n\n"
        "class nnUNetTrainerReLUChild(nnUNetTrainerReLU):\n"
        "    pass\n\n\n"
        "def _decorate(cls):\n"
        "    return cls\n\n\n"
        "@_decorate\n"
        "class nnUNetTrainerDecorated(nnUNetTrainer):\n"
        "    pass\n\n\n"
        "nnUNetTrainerMade = type('nnUNetTrainerMade', (nnUNetTrainer,), {})\n\n\n"
        "class nnUNetTrainerTwice(nnUNetTrainer):\n"
        "    pass\n\n\n"
        "class nnUNetTrainerAssigned(nnUNetTrainer):\n"
        "    build_network_architecture = nnUNetTrainerReLU.build_network_architecture\n"),
    "twice.py": "from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer\n\n\n"
                "class nnUNetTrainerTwice(nnUNetTrainer):\n    pass\n",
}


@pytest.fixture
def planted_trainers(tmp_path, monkeypatch):
    folder = tmp_path / "trainers"
    folder.mkdir()
    for name, text in PLANTED.items():
        (folder / name).write_text(text)
    monkeypatch.setenv("nnUNet_extTrainer", str(folder))
    return folder


def test_the_source_proves_only_trainers_that_keep_the_default_builder(planted_trainers, tmp_path):
    from nnbridge.models.trainer_source import builds_default_network, trainer_folders

    folders = trainer_folders()
    assert planted_trainers in folders and folders[0].parts[-3:] == ("nnunetv2", "training", "nnUNetTrainer")
    proven = {name for name in ("nnUNetTrainer", "nnUNetTrainer_5epochs", "nnBridgeDemoTrainer",
                                "nnUNetTrainerPlainX", "nnUNetTrainerPlainXChild")
              if builds_default_network(name)}
    assert proven == {"nnUNetTrainer", "nnUNetTrainer_5epochs", "nnBridgeDemoTrainer",
                      "nnUNetTrainerPlainX", "nnUNetTrainerPlainXChild"}
    # nnU-Net's own BatchNorm variant, a custom builder (also inherited or assigned), a decorated
    # class, a class made by a call, a name defined twice, an unknown name: import the class
    for name in ("nnUNetTrainerBN", "nnUNetTrainerReLU", "nnUNetTrainerReLUChild", "nnUNetTrainerAssigned",
                 "nnUNetTrainerDecorated", "nnUNetTrainerMade", "nnUNetTrainerTwice", "nnUNetTrainerNowhere"):
        assert not builds_default_network(name), name
    # a name no source file mentions cannot be installed there; one only mentioned might be
    from nnbridge.models.trainer_source import not_installed

    (planted_trainers / "notes.py").write_text("# nnUNetTrainerMentioned: see the wiki\n")
    assert not_installed("nnUNetTrainerNowhere")
    assert not any(not_installed(n) for n in ("nnUNetTrainerMentioned", "nnUNetTrainerReLU", "nnUNetTrainer_5epochs"))
    # a file that does not parse: nnU-Net's import of it would fail; nothing is proven
    (planted_trainers / "broken.py").write_text("class Broken(:\n")
    assert not builds_default_network("nnUNetTrainerPlainX")


def _copy_with_trainer(tiny_model, folder, trainer):
    shutil.copytree(tiny_model.model_folder, folder)
    path = folder / "fold_0" / tiny_model.checkpoint
    checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    checkpoint["trainer_name"] = trainer
    torch.save(checkpoint, path)


def test_a_proven_trainer_gets_the_network_its_class_builds(tiny_model, loaded_fold, planted_trainers, tmp_path):
    """Built without the trainer class, the demo trainer's network is the one its class's
    build_network_architecture returns: same modules, and the same logits with the fold's weights."""
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    from nnbridge.models.nnunet import _trainer_network, find_trainer_class
    from nnbridge.models.trainer_source import builds_default_network

    assert builds_default_network(loaded_fold.trainer_name)
    manager = PlansManager(loaded_fold.plans)
    cm = manager.get_configuration(loaded_fold.configuration)
    by_class = _trainer_network(find_trainer_class(loaded_fold.trainer_name), manager, cm,
                                loaded_fold.num_input_channels, loaded_fold.num_outputs)
    assert repr(by_class) == repr(loaded_fold.network)
    by_class.load_state_dict(loaded_fold.network.state_dict())
    by_class.eval()
    x = torch.randn(1, loaded_fold.num_input_channels, *loaded_fold.patch_size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(by_class(x), loaded_fold.network(x))
    # a planted trainer that only changes training settings loads the same way
    _copy_with_trainer(tiny_model, tmp_path / "plain", "nnUNetTrainerPlainX")
    plain = load_nnunet_fold(tmp_path / "plain", "0", tiny_model.checkpoint)
    assert plain.trainer_note is None and repr(plain.network) == repr(loaded_fold.network)


def test_a_trainer_with_its_own_builder_gets_its_network(tiny_model, loaded_fold, planted_trainers, tmp_path):
    """Same weights, ReLU instead of LeakyReLU: the strict load and the weight proof pass either
    way, so only building through the trainer's own class gives its network."""
    _copy_with_trainer(tiny_model, tmp_path / "relu", "nnUNetTrainerReLUChild")
    fold = load_nnunet_fold(tmp_path / "relu", "0", tiny_model.checkpoint)
    kinds = {type(m).__name__ for m in fold.network.modules()}
    assert fold.trainer_note is None and fold.weight_check.ok
    assert "ReLU" in kinds and "LeakyReLU" not in kinds
    assert "LeakyReLU" in {type(m).__name__ for m in loaded_fold.network.modules()}


def test_proven_and_absent_trainers_load_without_importing_a_trainer(tiny_model, tmp_path):
    """In a fresh process: the demo trainer's fold, and a copy whose trainer no source mentions
    (default network, with the note), load without nnU-Net's trainer module (torch._dynamo,
    seaborn, every trainer variant)."""
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    _copy_with_trainer(tiny_model, tmp_path / "absent", "nnUNetTrainerNowhereToBeFound")
    script = (
        "import json, sys\n"
        "from nnbridge.models.nnunet import load_nnunet_fold\n"
        "out = []\n"
        "for folder in sys.argv[2:]:\n"
        "    fold = load_nnunet_fold(folder, '0', sys.argv[1])\n"
        "    out.append([fold.weight_check.ok, fold.trainer_note,\n"
        "                'nnunetv2.training.nnUNetTrainer.nnUNetTrainer' in sys.modules])\n"
        "print(json.dumps(out))\n")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")}
    proc = subprocess.run([sys.executable, "-c", script, tiny_model.checkpoint, str(tiny_model.model_folder),
                           str(tmp_path / "absent")], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (ok, note, imported), (ok_absent, note_absent, imported_after) = json.loads(proc.stdout.splitlines()[-1])
    assert ok and note is None and not imported
    assert ok_absent and "not installed" in note_absent and not imported_after
