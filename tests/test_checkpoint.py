"""Weights files are untrusted: safe loading, clear refusals, both checkpoint kinds."""

import collections
import os

import pytest
import torch

from export.core.checkpoint import load_checkpoint, model_from_checkpoint, save_checkpoint
from export.core.errors import UserError
from export.core.models import ModelSpec


def test_random_bytes_are_not_a_weights_file(tmp_path):
    path = tmp_path / "noise.pt"
    path.write_bytes(os.urandom(4096))
    with pytest.raises(UserError, match="not a valid PyTorch weights file"):
        load_checkpoint(path)


def test_file_that_would_execute_code_is_refused(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"conv1.weight": torch.zeros(1), "hook": print}, path)
    with pytest.raises(UserError, match="would execute code"):
        load_checkpoint(path)


def test_missing_file_is_one_clear_error(tmp_path):
    with pytest.raises(UserError, match="not found"):
        load_checkpoint(tmp_path / "nope.pt")


def test_checkpoint_round_trip_and_plain_state_dict(tmp_path):
    spec = ModelSpec.create("resnet20", num_classes=10, in_chans=1)
    model = spec.build().eval()
    save_checkpoint(tmp_path / "ckpt.pt", model, spec, [str(i) for i in range(10)], epoch=3)
    ckpt = load_checkpoint(tmp_path / "ckpt.pt")
    assert ckpt.spec == spec and ckpt.meta["epoch"] == 3 and ckpt.class_names[9] == "9"
    x = torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        assert torch.equal(model_from_checkpoint(ckpt)(x), model(x))

    torch.save(collections.OrderedDict(model.state_dict()), tmp_path / "plain.pth")
    plain = load_checkpoint(tmp_path / "plain.pth")
    assert plain.spec is None
    with pytest.raises(UserError, match="name the model"):
        model_from_checkpoint(plain)
    wrong = ModelSpec.create("resnet32", num_classes=10, in_chans=1)
    with pytest.raises(UserError, match="does not fit the model"):
        model_from_checkpoint(plain, wrong)
