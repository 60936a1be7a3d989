"""Every network the catalog offers, and custom layer lists, build and take a training step."""

from __future__ import annotations

import pytest
import torch
from pydantic import TypeAdapter
from torch import nn

from shared.networks import CATALOG, Layer, NetworkShapeError, check_custom
from worker.training.models import LeNet, build_custom, build_model, load_init_weights

CLASSES = 7
CLASSIFIERS = sorted(n for n, info in CATALOG.items() if info.task == "classification")
TORCHVISION = [n for n in CLASSIFIERS if CATALOG[n].family == "torchvision"]

CUSTOM_LAYERS: list[dict[str, object]] = [
    {"type": "conv2d", "out_channels": 8, "kernel_size": 3, "padding": "same"},
    {"type": "batchnorm2d"},
    {"type": "relu"},
    {"type": "maxpool2d", "kernel_size": 2},
    {"type": "conv2d", "out_channels": 12, "kernel_size": 3, "stride": 2, "groups": 4},
    {"type": "leaky_relu", "negative_slope": 0.1},
    {"type": "dropout2d", "p": 0.1},
    {"type": "avgpool2d", "kernel_size": 2, "stride": 1},
    {"type": "adaptive_avgpool2d", "output_size": 2},
    {"type": "flatten"},
    {"type": "linear", "out_features": 16, "bias": False},
    {"type": "batchnorm1d"},
    {"type": "gelu"},
    {"type": "dropout", "p": 0.2},
    {"type": "linear"},
]


def one_step(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Forward, backward and an SGD step; returns the output of the forward pass."""
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    before = [p.detach().clone() for p in model.parameters()]
    out = model(x)
    loss = nn.functional.cross_entropy(out, torch.arange(x.shape[0]) % CLASSES)
    loss.backward()
    optimizer.step()
    assert torch.isfinite(loss)
    assert any(not torch.equal(b, p) for b, p in zip(before, model.parameters(), strict=True))
    return out


@pytest.mark.parametrize("name", TORCHVISION)
def test_torchvision_network_trains_one_step(name: str) -> None:
    torch.manual_seed(0)
    model = build_model({"kind": "standard", "name": name}, CLASSES, 3, 32, 32)
    out = one_step(model, torch.randn(2, 3, 32, 32))
    assert out.shape == (2, CLASSES)


@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v3_small"])
def test_torchvision_network_takes_one_channel(name: str) -> None:
    model = build_model({"kind": "standard", "name": name}, CLASSES, 1, 32, 32)
    assert one_step(model, torch.randn(2, 1, 32, 32)).shape == (2, CLASSES)


@pytest.mark.parametrize(
    ("name", "shape"),
    [
        ("lenet", (1, 28, 28)),
        ("lenet", (3, 8, 8)),
        ("lenet", (1, 40, 33)),
        ("alexnet", (3, 32, 32)),
        ("alexnet", (1, 16, 16)),
        ("alexnet", (3, 64, 64)),
        ("googlenet", (3, 32, 32)),
        ("googlenet", (1, 16, 16)),
        ("googlenet", (3, 64, 64)),
    ],
)
def test_digits_network_trains_one_step(name: str, shape: tuple[int, int, int]) -> None:
    torch.manual_seed(0)
    model = build_model({"kind": "standard", "name": name}, CLASSES, *shape)
    out = one_step(model, torch.randn(2, *shape))
    assert out.shape == (2, CLASSES)


def test_lenet_is_digits_lenet_at_28px() -> None:
    model = LeNet(10, 1, 28, 28)
    convs = [m for m in model if isinstance(m, nn.Conv2d)]
    linears = [m for m in model if isinstance(m, nn.Linear)]
    assert [(c.out_channels, c.kernel_size, c.padding) for c in convs] == [
        (20, (5, 5), (0, 0)),
        (50, (5, 5), (0, 0)),
    ]
    assert [(m.in_features, m.out_features) for m in linears] == [(800, 500), (500, 10)]


def test_custom_network_trains_and_matches_check_custom() -> None:
    torch.manual_seed(0)
    model = build_model({"kind": "custom", "layers": CUSTOM_LAYERS}, CLASSES, 1, 28, 28)
    out = one_step(model, torch.randn(2, 1, 28, 28))
    assert out.shape == (2, CLASSES)
    layers = TypeAdapter(list[Layer]).validate_python(CUSTOM_LAYERS)
    expected = check_custom(layers, 1, 28, 28, CLASSES)
    assert sum(p.numel() for p in model.parameters()) == expected


def test_custom_network_that_cannot_fit_is_refused() -> None:
    layers = [
        {"type": "conv2d", "out_channels": 4, "kernel_size": 9},
        {"type": "flatten"},
        {"type": "linear"},
    ]
    with pytest.raises(NetworkShapeError, match="layer 0"):
        build_custom(layers, CLASSES, 1, 8, 8)


def test_standard_network_too_small_input_is_refused() -> None:
    with pytest.raises(ValueError, match="at least 32x32"):
        build_model({"kind": "standard", "name": "vgg16"}, CLASSES, 3, 16, 16)


def test_load_init_weights_skips_only_mismatched_tensors() -> None:
    torch.manual_seed(0)
    source = build_model({"kind": "standard", "name": "lenet"}, 10, 1, 28, 28)
    torch.manual_seed(1)
    target = build_model({"kind": "standard", "name": "lenet"}, 4, 1, 28, 28)
    head_before = target[7].weight.detach().clone()
    skipped = load_init_weights(target, source.state_dict())
    assert sorted(skipped) == ["7.bias", "7.weight"]
    for key, value in target.state_dict().items():
        if key.startswith("7."):
            continue
        assert torch.equal(value, source.state_dict()[key]), key
    assert torch.equal(target[7].weight, head_before)


# -- the checks an uploaded model passes before anything real is built ---------------------


@pytest.mark.parametrize("name", CLASSIFIERS)
def test_the_meta_device_build_names_and_shapes_what_the_real_build_holds(name: str) -> None:
    """Uploads are checked against the meta build: it must agree with the real network."""
    from worker.training import inference

    network = {"kind": "standard", "name": name}
    real = build_model(network, CLASSES, 3, 32, 32)
    expected = inference.expected_state(network, CLASSES, 3, 32, 32)
    assert expected == {
        k: (tuple(v.shape), v.is_floating_point()) for k, v in real.state_dict().items()
    }


def test_a_detector_or_segmenter_is_not_built_as_a_classifier() -> None:
    """An uploaded info.json naming one is refused with the reason, not a KeyError."""
    from worker.training import inference

    for name in ("fcos_resnet18_fpn", "lraspp_mobilenet_v3_large"):
        with pytest.raises(inference.ModelFileError, match="not a classifier"):
            inference.expected_state({"kind": "standard", "name": name}, CLASSES, 3, 32, 32)


def test_the_meta_device_build_of_a_custom_network_matches_too() -> None:
    from worker.training import inference

    network = {"kind": "custom", "layers": CUSTOM_LAYERS}
    real = build_model(network, CLASSES, 1, 28, 28)
    expected = inference.expected_state(network, CLASSES, 1, 28, 28)
    assert expected == {
        k: (tuple(v.shape), v.is_floating_point()) for k, v in real.state_dict().items()
    }


def test_a_network_too_small_for_its_input_is_a_model_file_error() -> None:
    from worker.training import inference

    with pytest.raises(inference.ModelFileError, match="at least 32x32"):
        inference.expected_state({"kind": "standard", "name": "vgg16"}, CLASSES, 3, 16, 16)


def test_parse_model_info_refuses_a_deep_nest_without_parsing_it() -> None:
    import time

    from shared.schemas.models import InvalidModelInfo, parse_model_info

    t0 = time.perf_counter()
    with pytest.raises(InvalidModelInfo, match="nested too deep"):
        parse_model_info(b"[" * 100_000 + b"]" * 100_000)
    print(f"100,000-deep info.json refused in {(time.perf_counter() - t0) * 1000:.2f} ms")


def test_json_depth_skips_brackets_inside_strings() -> None:
    from shared.schemas.models import json_depth

    assert json_depth(b'{"a": ["[[[", {"b": "\\\\"}], "c": "\\"{{{"}') == 3
    assert json_depth(b"3") == 0
    assert json_depth(b"[[], [[]]]") == 3


def test_info_json_of_a_trained_network_passes_the_upload_schema() -> None:
    """What a download writes is what an upload may hold: the two round-trip exactly."""
    from shared.schemas.models import ModelInfo, parse_model_info
    from worker.training import inference

    torch.manual_seed(0)
    network = {"kind": "custom", "layers": CUSTOM_LAYERS}
    net = build_model(network, CLASSES, 1, 28, 28)
    model = inference.from_parts(
        network,
        [f"class {i}" for i in range(CLASSES)],
        net.state_dict(),
        height=28,
        width=28,
        channels=1,
        mean=None,
        crop=None,
        meta={"metrics": {"val/accuracy": 0.9, "val/loss": float("nan")}},
    )
    info = inference.info_json(
        model, name="custom", resize_mode="fill", checkpoint={"epoch": 3}, exports={}
    )
    assert isinstance(info, ModelInfo)
    assert info.metrics == {"val/accuracy": 0.9}
    assert parse_model_info(info.model_dump_json().encode()) == info
