"""The model family: exact sizes, shapes, torchvision's state-dict scheme, rebuilds, bad names."""

import pytest
import torch
from click.testing import CliRunner

from export.cli import main as export_cli
from export.core.counting import count_macs, count_parameters
from export.core.models import (
    ModelSpec,
    UnknownModelError,
    build_model,
    model_names,
    resnet50,
)

# torchvision's published parameter counts (1000 classes).
IMAGENET_PARAMS = {
    "resnet18": 11_689_512,
    "resnet34": 21_797_672,
    "resnet50": 25_557_032,
    "resnet101": 44_549_160,
    "resnet152": 60_192_808,
    "resnext50_32x4d": 25_028_904,
    "wide_resnet50_2": 68_883_240,
}
# He et al. 2015, table 6 (CIFAR-10, option A shortcuts), in millions.
CIFAR_PARAMS_M = {"resnet20": 0.27, "resnet32": 0.46, "resnet44": 0.66, "resnet56": 0.85,
                  "resnet110": 1.7}


@pytest.mark.parametrize("name,expected", IMAGENET_PARAMS.items())
def test_imagenet_parameter_counts_match_torchvision(name, expected):
    assert count_parameters(build_model(name)) == expected


@pytest.mark.parametrize("name,millions", CIFAR_PARAMS_M.items())
def test_cifar_parameter_counts_match_paper(name, millions):
    params = count_parameters(build_model(name, num_classes=10))
    assert abs(params / 1e6 - millions) / millions < 0.03


def test_projection_shortcut_adds_parameters_and_option_a_has_none():
    a = build_model("resnet20", num_classes=10, shortcut="A")
    b = build_model("resnet20", num_classes=10, shortcut="B")
    assert not list(a.layer2[0].downsample.parameters())
    # two 1x1 projections (16->32, 32->64) with their BatchNorms
    assert count_parameters(b) - count_parameters(a) == (16 * 32 + 2 * 32) + (32 * 64 + 2 * 64)


@pytest.mark.parametrize("name", model_names())
def test_forward_shape_every_model(name):
    model = build_model(name, num_classes=7).eval()
    with torch.no_grad():
        out = model(torch.randn(2, 3, 64, 64))
    assert out.shape == (2, 7)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("name", ["resnet18", "resnet50", "resnet20"])
def test_grayscale_input(name):
    model = build_model(name, num_classes=10, in_chans=1).eval()
    assert model.conv1.weight.shape[1] == 1
    with torch.no_grad():
        assert model(torch.randn(3, 1, 32, 32)).shape == (3, 10)


def _torchvision_scheme(block: str, layers, num_classes=1000, in_chans=3, width=1):
    """torchvision's ResNet state-dict keys and shapes, written from its naming rules."""
    keys = {}

    def bn(prefix, c):
        keys.update({f"{prefix}.weight": (c,), f"{prefix}.bias": (c,),
                     f"{prefix}.running_mean": (c,), f"{prefix}.running_var": (c,),
                     f"{prefix}.num_batches_tracked": ()})

    keys["conv1.weight"] = (64, in_chans, 7, 7)
    bn("bn1", 64)
    expansion = 1 if block == "basic" else 4
    inplanes = 64
    for stage, (planes, blocks) in enumerate(zip((64, 128, 256, 512), layers), start=1):
        for i in range(blocks):
            p = f"layer{stage}.{i}"
            if block == "basic":
                keys[f"{p}.conv1.weight"] = (planes, inplanes, 3, 3)
                bn(f"{p}.bn1", planes)
                keys[f"{p}.conv2.weight"] = (planes, planes, 3, 3)
                bn(f"{p}.bn2", planes)
            else:
                w = planes * width
                keys[f"{p}.conv1.weight"] = (w, inplanes, 1, 1)
                bn(f"{p}.bn1", w)
                keys[f"{p}.conv2.weight"] = (w, w, 3, 3)
                bn(f"{p}.bn2", w)
                keys[f"{p}.conv3.weight"] = (planes * 4, w, 1, 1)
                bn(f"{p}.bn3", planes * 4)
            if i == 0 and (stage > 1 or inplanes != planes * expansion):
                keys[f"{p}.downsample.0.weight"] = (planes * expansion, inplanes, 1, 1)
                bn(f"{p}.downsample.1", planes * expansion)
            inplanes = planes * expansion
    keys["fc.weight"] = (num_classes, 512 * expansion)
    keys["fc.bias"] = (num_classes,)
    return keys


@pytest.mark.parametrize("name,block,layers", [
    ("resnet18", "basic", (2, 2, 2, 2)), ("resnet34", "basic", (3, 4, 6, 3)),
    ("resnet50", "bottleneck", (3, 4, 6, 3)), ("resnet101", "bottleneck", (3, 4, 23, 3)),
    ("resnet152", "bottleneck", (3, 8, 36, 3)),
])
def test_state_dict_follows_torchvision_scheme(name, block, layers):
    state = build_model(name).state_dict()
    expected = _torchvision_scheme(block, layers)
    assert list(state) == list(expected)  # same keys, same order
    assert {k: tuple(v.shape) for k, v in state.items()} == expected


def test_bottleneck_carries_stride_on_the_3x3():
    block = build_model("resnet50").layer2[0]
    assert block.conv1.stride == (1, 1)
    assert block.conv2.stride == (2, 2)
    assert block.downsample[0].stride == (2, 2)


def test_torchvision_weights_load_both_ways():
    tv = pytest.importorskip("torchvision", reason="torchvision is not installed")
    for name in ("resnet18", "resnet50"):
        ours = build_model(name).eval()
        theirs = getattr(tv.models, name)().eval()
        ours.load_state_dict(theirs.state_dict())
        x = torch.randn(2, 3, 64, 64)
        with torch.no_grad():
            torch.testing.assert_close(ours(x), theirs(x))
        theirs.load_state_dict(build_model(name).state_dict())


def test_zero_init_residual_zeros_the_last_bn_of_each_block():
    model = build_model("resnet50", zero_init_residual=True)
    assert all(float(b.bn3.weight.detach().abs().sum()) == 0 for layer in
               (model.layer1, model.layer2, model.layer3, model.layer4) for b in layer)
    plain = build_model("resnet18")
    assert float(plain.layer1[0].bn2.weight.detach().sum()) == 64


def test_rebuild_from_description_gives_identical_logits():
    spec = ModelSpec.create("resnet20", num_classes=10, in_chans=1)
    model = spec.build().eval()
    restored_spec = ModelSpec.from_dict(spec.to_dict())
    assert restored_spec == spec
    clone = restored_spec.build().eval()
    clone.load_state_dict(model.state_dict())
    x = torch.randn(4, 1, 32, 32)
    with torch.no_grad():
        assert torch.equal(model(x), clone(x))


def test_spec_defaults_and_validation():
    assert ModelSpec.create("50").input_size == 224
    assert ModelSpec.create("resnet20", in_chans=1).mean == (0.5,)
    with pytest.raises(ValueError, match="mean/std"):
        ModelSpec("resnet18", in_chans=1)  # ImageNet's three-channel statistics
    with pytest.raises(ValueError, match="unknown fields"):
        ModelSpec.from_dict({"name": "resnet18", "colour": "red"})


def test_thin_builder_matches_build_model():
    assert count_parameters(resnet50(num_classes=10)) == count_parameters(
        build_model("resnet50", num_classes=10))


def test_unknown_model_name_lists_valid_ones():
    with pytest.raises(UnknownModelError, match="resnet18.*resnet152"):
        build_model("resnet42")


def test_macs_come_from_the_flop_counter():
    # ResNet-50 at 224x224 is the well-known 4.09 GMACs. Doubling the side quadruples every
    # convolution exactly, while the classifier (2048 x 1000 MACs) stays the same.
    model = build_model("resnet50")
    macs = count_macs(model, 224)
    assert 4.08e9 < macs < 4.10e9
    fc = 2048 * 1000
    assert count_macs(model, 448) - fc == 4 * (macs - fc)


def test_cli_unknown_depth_exits_2_with_one_line():
    result = CliRunner().invoke(export_cli, ["--depth", "42"])
    assert result.exit_code == 2
    assert "unknown model '42'" in result.output
    assert "resnet50" in result.output


def test_cli_lists_models_with_counts():
    result = CliRunner().invoke(export_cli, ["--list-models"])
    assert result.exit_code == 0, result.output
    assert "25,557,032" in result.output and "resnet110" in result.output


# --- the small-image stem of the ImageNet models ----------------------------------------------


def test_small_stem_is_a_3x3_stride_1_conv_without_maxpool():
    imagenet = build_model("resnet18", num_classes=10, in_chans=1)
    small = build_model("resnet18", num_classes=10, in_chans=1, stem="small")
    assert tuple(small.conv1.weight.shape) == (64, 1, 3, 3) and small.conv1.stride == (1, 1)
    assert isinstance(small.maxpool, torch.nn.Identity)
    # every module name is kept; only conv1's shape differs
    ours, theirs = small.state_dict(), imagenet.state_dict()
    assert list(ours) == list(theirs)
    assert [k for k in ours if ours[k].shape != theirs[k].shape] == ["conv1.weight"]
    x = torch.randn(2, 1, 28, 28)
    with torch.no_grad():
        assert small.eval()(x).shape == (2, 10)
        # layer4 sees 4x4 (28 / 8, rounded up) instead of 1x1: 16x the spatial work per stage
        features = small.maxpool(small.relu(small.bn1(small.conv1(x))))
        assert small.layer4(small.layer3(small.layer2(small.layer1(features)))).shape[-1] == 4
    # the common CIFAR ResNet-18: 0.56 GMACs at 32x32 (the ImageNet stem there: 0.04)
    assert 0.55e9 < count_macs(build_model("resnet18", num_classes=10, stem="small"), 32) < 0.57e9


def test_torchvision_weights_load_into_the_small_stem_except_conv1():
    state = build_model("resnet50").state_dict()
    small = build_model("resnet50", stem="small")
    del state["conv1.weight"]
    missing, unexpected = small.load_state_dict(state, strict=False)
    assert missing == ["conv1.weight"] and unexpected == []


def test_stem_travels_in_the_spec_and_old_descriptions_mean_imagenet():
    spec = ModelSpec.create("resnet18", num_classes=10, in_chans=1, input_size=28, stem="small")
    assert spec.to_dict()["stem"] == "small"
    assert ModelSpec.from_dict(spec.to_dict()) == spec
    assert tuple(spec.build().conv1.weight.shape) == (64, 1, 3, 3)
    old = {k: v for k, v in ModelSpec.create("resnet18").to_dict().items() if k != "stem"}
    assert ModelSpec.from_dict(old).stem == "imagenet"
    assert ModelSpec.create("resnet18").stem == "imagenet"
    # the small-image ResNets have only the small stem, and say so
    assert ModelSpec.create("resnet20").stem == "small"
    assert ModelSpec.from_dict({"name": "resnet20"}).stem == "small"
    with pytest.raises(ValueError, match="always the small"):
        ModelSpec.create("resnet20", stem="imagenet")
    with pytest.raises(ValueError, match="stem must be one of"):
        ModelSpec.create("resnet18", stem="tiny")


def test_resnet8_is_the_papers_formula_at_one_block_per_stage():
    """6n+2 layers at n=1: conv1, one BasicBlock per stage (16/32/64), fc. Counted by hand for
    10 classes and RGB: conv1 432 + bn 32, layer1 2 x 2,304 + 64, layer2 4,608 + 9,216 + 128,
    layer3 18,432 + 36,864 + 256, fc 650 = 75,290."""
    model = build_model("resnet8", num_classes=10, in_chans=3)
    assert count_parameters(model) == 75_290
    assert [len(getattr(model, f"layer{i}")) for i in (1, 2, 3)] == [1, 1, 1]


def _stage_sizes(model, side=32):
    sizes = {}
    hooks = [getattr(model, f"layer{i}").register_forward_hook(
        lambda _m, _i, out, i=i: sizes.__setitem__(i, tuple(out.shape[-2:]))) for i in (1, 2, 3)]
    with torch.no_grad():
        model(torch.randn(1, 3, side, side))
    for hook in hooks:
        hook.remove()
    return sizes


def test_avgpool_downsampling_averages_where_the_paper_strides():
    """Same parameters (the state dicts load into each other), the same stage sizes, a
    different function: the pooled network's stages run at stride 1 after a 2x2 average."""
    torch.manual_seed(0)
    paper = build_model("resnet20", num_classes=10).eval()
    pooled = build_model("resnet20", num_classes=10, downsample="avgpool").eval()
    pooled.load_state_dict(paper.state_dict())
    assert _stage_sizes(paper) == _stage_sizes(pooled) == {1: (32, 32), 2: (16, 16), 3: (8, 8)}
    assert pooled.layer2[0].conv1.stride == (1, 1) and paper.layer2[0].conv1.stride == (2, 2)
    assert isinstance(pooled.pool, torch.nn.AvgPool2d)
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        assert not torch.allclose(paper(x), pooled(x), atol=1e-3)
        # a pixel-level checkerboard (period 2) averages to nothing in the pooled network's
        # layer2 input; the paper's stride keeps one pixel in four, the board's one phase
        board = torch.ones(1, 16, 32, 32)
        board[..., ::2, 1::2] = board[..., 1::2, ::2] = -1
        assert pooled.pool(board).abs().max() == 0
        kept = paper.layer2[0].downsample(board)[:, 8:24]  # 16 channels padded to 32
        assert kept.shape[-1] == 16 and kept.abs().min() == 1


def test_downsample_travels_in_the_spec_and_old_descriptions_mean_stride():
    spec = ModelSpec.create("resnet8", num_classes=10, in_chans=3, downsample="avgpool")
    assert spec.to_dict()["downsample"] == "avgpool"
    assert ModelSpec.from_dict(spec.to_dict()) == spec
    assert isinstance(spec.build().pool, torch.nn.AvgPool2d)
    old = {k: v for k, v in spec.to_dict().items() if k != "downsample"}
    assert ModelSpec.from_dict(old).downsample == "stride"
    assert ModelSpec.create("resnet50").downsample == "stride"
    with pytest.raises(ValueError, match="small-image ResNets"):
        ModelSpec.create("resnet18", downsample="avgpool")
    with pytest.raises(ValueError, match="downsample must be one of"):
        ModelSpec.from_dict({**spec.to_dict(), "downsample": "maxpool"})
    with pytest.raises(ValueError, match="downsample must be a string"):
        ModelSpec.from_dict({**spec.to_dict(), "downsample": 2})
