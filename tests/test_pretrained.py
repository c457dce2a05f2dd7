"""--init-weights imagenet (export/core/pretrained.py): torchvision's published weights from the
torch hub cache, or downloaded with their hash checked; nothing can be downloaded here, so the
files are served from a temporary hub cache and a file:// URL, the way torch.hub reads them."""

import hashlib
import re

import pytest
import torch

from export.core import pretrained
from export.core.errors import UserError
from export.core.models import build_model, get_architecture, model_names
from export.train import TrainConfig
from export.train.adapt import load_init_weights


def test_every_imagenet_model_has_its_published_file():
    imagenet = [n for n in model_names() if get_architecture(n).kind == "imagenet"]
    assert sorted(pretrained.IMAGENET_WEIGHTS) == sorted(imagenet)
    for name, url in pretrained.IMAGENET_WEIGHTS.items():
        assert re.fullmatch(rf"https://download\.pytorch\.org/models/{name}-[0-9a-f]{{8}}\.pth",
                            url)
    assert pretrained.hash_prefix(pretrained.IMAGENET_WEIGHTS["resnet18"]) == "f37072fd"


@pytest.fixture
def served(tmp_path, monkeypatch):
    """A resnet18 state dict published at a file:// URL named as torchvision names its files,
    and an empty hub cache under TORCH_HOME."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    torch.manual_seed(3)
    state = build_model("resnet18").state_dict()
    blob = tmp_path / "blob.pth"
    torch.save(state, blob)
    prefix = hashlib.sha256(blob.read_bytes()).hexdigest()[:8]
    published = tmp_path / "server" / f"resnet18-{prefix}.pth"
    published.parent.mkdir()
    blob.rename(published)
    monkeypatch.setitem(pretrained.IMAGENET_WEIGHTS, "resnet18", published.as_uri())
    return state, published, tmp_path / "torch" / "hub" / "checkpoints" / published.name


def test_downloaded_once_into_the_hub_cache_then_used_from_it(served):
    state, published, cached = served
    assert not cached.exists()
    assert pretrained.imagenet_weights("resnet18") == cached  # "downloaded" with its hash checked
    assert cached.read_bytes() == published.read_bytes()
    published.unlink()  # the network is gone: the cache still serves
    assert pretrained.imagenet_weights("18") == cached
    model = build_model("resnet18", num_classes=5)
    notes = load_init_weights(model, TrainConfig(model="resnet18", init_weights="imagenet"))
    assert any("ImageNet weights resnet18-" in n and "sha256 checked" in n for n in notes)
    assert any("new classifier: 1000 -> 5" in n for n in notes)
    assert torch.equal(model.layer4[1].conv2.weight, state["layer4.1.conv2.weight"])


def test_a_damaged_cached_file_and_a_closed_network_are_one_line(served):
    _, published, cached = served
    cached.parent.mkdir(parents=True)
    cached.write_bytes(published.read_bytes()[:-10])
    with pytest.raises(UserError, match="does not match its published sha256") as exc_info:
        pretrained.imagenet_weights("resnet18")
    assert "\n" not in str(exc_info.value)
    cached.unlink()
    published.unlink()
    with pytest.raises(UserError, match="cannot download file://.*place it at") as exc_info:
        pretrained.imagenet_weights("resnet18")
    assert "\n" not in str(exc_info.value) and not cached.exists()
    with pytest.raises(UserError, match="not for resnet20"):
        pretrained.imagenet_weights("resnet20")
