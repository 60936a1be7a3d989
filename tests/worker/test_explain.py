"""Explanations that explain: a class decided only by a small marker at a random place, among
noise and dim copies of every class's marker. A trained network's Grad-CAM must point at the
marker, a re-initialised one's must not look like it, and Integrated Gradients must add up.
Also DIGITS's layer views on LeNet and ResNet-18, and the target layer of each network."""

from __future__ import annotations

import io
import logging
import time
from dataclasses import dataclass

import numpy as np
import pytest
import torch
from PIL import Image
from scipy.stats import spearmanr

from shared.schemas.jobs import Hyperparameters
from shared.schemas.models import LayerView
from worker.datasets.importer import ImportOptions, Source, import_dataset
from worker.training import explain, inference, layers
from worker.training.engine import TrainSpec, train
from worker.training.models import build_model

from .test_training import Recorder

log = logging.getLogger(__name__)

SIDE = 32  # image side
MARK = 6  # marker side
CLASSES = 4
# a CAM-friendly custom network: "same" convolutions, so a map cell sits over the pixels it
# sees, and global pooling, so the class can come from anywhere in the image
GAP_NET = {
    "kind": "custom",
    "layers": [
        {"type": "conv2d", "out_channels": 16, "kernel_size": 3, "padding": "same"},
        {"type": "relu"},
        {"type": "maxpool2d", "kernel_size": 2},
        {"type": "conv2d", "out_channels": 32, "kernel_size": 3, "padding": "same"},
        {"type": "relu"},
        {"type": "conv2d", "out_channels": 64, "kernel_size": 3, "padding": "same"},
        {"type": "relu"},
        {"type": "adaptive_avgpool2d", "output_size": 1},
        {"type": "flatten"},
        {"type": "linear"},
    ],
}


def _shapes() -> np.ndarray:
    """The class markers: a plus, an X, a square ring and two bars (6x6 masks)."""
    s = np.zeros((CLASSES, MARK, MARK), dtype=bool)
    s[0, 2:4, :] = s[0, :, 2:4] = True
    for i in range(MARK):
        s[1, i, i] = s[1, i, MARK - 1 - i] = True
    s[2, 0, :] = s[2, -1, :] = s[2, :, 0] = s[2, :, -1] = True
    s[3, 0:2, :] = s[3, 4:6, :] = True
    return s


SHAPES = _shapes()


def _free_spot(rng: np.random.Generator, taken: list[tuple[int, int]]) -> tuple[int, int]:
    while True:
        r, c = (int(v) for v in rng.integers(0, SIDE - MARK + 1, 2))
        if all(abs(r - r2) > MARK or abs(c - c2) > MARK for r2, c2 in taken):
            return r, c


def marker_image(rng: np.random.Generator, label: int) -> tuple[np.ndarray, tuple[int, int]]:
    """Noise, three dim markers of random classes, and the bright marker of `label`."""
    image = rng.integers(0, 80, (SIDE, SIDE)).astype(np.uint8)
    spot = _free_spot(rng, [])
    taken = [spot]
    for _ in range(3):  # distractors: every class's shape appears in every class's images
        r, c = _free_spot(rng, taken)
        taken.append((r, c))
        image[r : r + MARK, c : c + MARK][SHAPES[rng.integers(0, CLASSES)]] = rng.integers(110, 150)
    r, c = spot
    image[r : r + MARK, c : c + MARK][SHAPES[label]] = rng.integers(220, 256)
    return image, spot


@dataclass
class Validation:
    """Held-out images with their labels and marker corners."""

    images: np.ndarray  # N x H x W x 1 uint8
    labels: np.ndarray
    spots: list[tuple[int, int]]


def validation_set(count: int, seed: int) -> Validation:
    rng = np.random.default_rng(seed)
    pairs = [marker_image(rng, i % CLASSES) for i in range(count)]
    return Validation(
        np.stack([img for img, _ in pairs])[..., None],
        np.arange(count) % CLASSES,
        [spot for _, spot in pairs],
    )


@pytest.fixture(scope="module")
def marker_model(tmp_path_factory: pytest.TempPathFactory) -> inference.LoadedModel:
    """The GAP network trained on 1,600 marker images (6 epochs, Adam): about 35 s on 2 cores."""
    root = tmp_path_factory.mktemp("marker")
    rng = np.random.default_rng(0)
    for i in range(1600):
        image, _ = marker_image(rng, i % CLASSES)
        path = root / "src" / str(i % CLASSES) / f"{i:05d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image, "L").save(path)
    options = ImportOptions(width=SIDE, height=SIDE, channels=1, val_pct=20, seed=1, workers=1)
    import_dataset(Source(kind="folder", root=root / "src"), options, root / "dataset")
    hyper = Hyperparameters(
        epochs=6,
        batch_size=32,
        learning_rate=0.003,
        solver="adam",
        lr_policy="fixed",
        seed=0,
        use_mean="none",
    )
    started = time.perf_counter()
    result = train(
        TrainSpec(root / "dataset", GAP_NET, hyper, root / "out", device="cpu"), Recorder()
    )
    print(
        f"marker network: val accuracy {result.last['val.accuracy']:.3f} "
        f"after {time.perf_counter() - started:.1f} s"
    )
    model = inference.load_checkpoint(root / "out" / "checkpoints" / "last.pt")
    explain.freeze(model)
    return model


def _inside(spot: tuple[int, int], at: tuple[int, int]) -> bool:
    return spot[0] <= at[0] < spot[0] + MARK and spot[1] <= at[1] < spot[1] + MARK


def test_gradcam_peaks_inside_the_marker_on_held_out_images(
    marker_model: inference.LoadedModel,
) -> None:
    val = validation_set(200, seed=99)
    hits = correct = 0
    started = time.perf_counter()
    for image, label, spot in zip(val.images, val.labels, val.spots, strict=True):
        item = explain.explain_image(marker_model, image, explain.ExplainOptions("gradcam"))
        correct += item.top[0]["index"] == label
        hits += _inside(spot, explain.peak(item.heat))
    ms = (time.perf_counter() - started) / len(val.labels) * 1000
    print(
        f"grad-cam at {item.layer} {item.raw.shape}: accuracy {correct / 200:.3f}, "
        f"peak inside the 6x6 marker {hits / 200:.3f}, {ms:.1f} ms per image"
    )
    assert item.layer == "6"  # torchcam's locator: the last ReLU, 16x16
    assert correct / 200 >= 0.95  # the explanation is of a network that learnt the task
    assert hits / 200 >= 0.8


def test_maps_of_a_reinitialised_network_are_far_from_the_trained_ones(
    marker_model: inference.LoadedModel,
) -> None:
    """Adebayo et al. (2018): a method that only draws the image's edges would pass 'looks
    plausible' but give the same map for random weights."""
    torch.manual_seed(123)
    fresh = build_model(GAP_NET, CLASSES, 1, SIDE, SIDE)
    random_model = inference.from_parts(
        GAP_NET,
        marker_model.classes,
        fresh.state_dict(),
        height=SIDE,
        width=SIDE,
        channels=1,
        mean=None,
        crop=None,
    )
    explain.freeze(random_model)
    val = validation_set(60, seed=7)
    rhos, flat = [], 0
    for image in val.images:
        trained = explain.explain_image(marker_model, image, explain.ExplainOptions("gradcam"))
        target = explain.ExplainOptions("gradcam", target=trained.target["index"])
        shuffled = explain.explain_image(random_model, image, target)
        if np.ptp(trained.heat) == 0 or np.ptp(shuffled.heat) == 0:
            flat += 1  # a constant map (all negative evidence, cut by ReLU) ranks nothing
            continue
        rhos.append(float(spearmanr(trained.heat.ravel(), shuffled.heat.ravel()).statistic))
    print(
        f"Spearman rank correlation, trained vs re-initialised Grad-CAM: mean {np.mean(rhos):.3f}"
        f", median {np.median(rhos):.3f}, max {np.max(rhos):.3f} over {len(rhos)} images "
        f"(and {flat} where the re-initialised map is constant)"
    )
    assert len(rhos) >= 40  # mostly real maps were compared
    assert np.mean(rhos) < 0.3


def test_integrated_gradients_add_up_to_the_output_difference(
    marker_model: inference.LoadedModel,
) -> None:
    val = validation_set(20, seed=3)
    net, errors = marker_model.classifier.net, []
    for image in val.images:
        item = explain.explain_image(
            marker_model, image, explain.ExplainOptions("integrated_gradients")
        )
        c = item.target["index"]
        batch = torch.from_numpy(image[None])
        black = torch.zeros_like(batch)
        with torch.no_grad():  # the output difference, computed here, not by Captum
            prep = marker_model.classifier.preprocess
            diff = float(net(prep(batch))[0, c] - net(prep(black))[0, c])
        errors.append(abs(float(item.raw.sum()) - diff) / abs(diff))
        assert item.raw.shape == (SIDE, SIDE)
        assert abs(item.delta or 0.0) <= 0.05 * abs(diff)
    print(
        f"integrated gradients (50 steps): |sum - output difference| / difference: "
        f"max {max(errors):.4f}, mean {np.mean(errors):.4f}"
    )
    assert max(errors) <= 0.05


@pytest.mark.parametrize("method", ["gradcampp", "layercam", "occlusion"])
def test_the_other_methods_give_maps_and_overlays(
    marker_model: inference.LoadedModel, method: str
) -> None:
    val = validation_set(20, seed=11)
    hits = 0
    for image, spot in zip(val.images, val.spots, strict=True):
        item = explain.explain_image(marker_model, image, explain.ExplainOptions(method))  # type: ignore[arg-type]
        hits += _inside(spot, explain.peak(item.heat))
    overlay = Image.open(io.BytesIO(item.overlay_png))
    print(f"{method}: peak inside the marker for {hits}/20 images; note {item.note!r}")
    assert overlay.format == "PNG"
    assert overlay.size == (128, 128)  # 32 px enlarged 4x (at least 112 px)
    assert item.heat.shape == (SIDE, SIDE)
    assert item.heat.min() >= 0.0
    assert item.heat.max() <= 1.0
    assert hits >= 10  # well above chance (36 of 1024 pixels are the marker)


def test_a_target_can_be_named_by_label_and_a_wrong_one_is_refused(
    marker_model: inference.LoadedModel,
) -> None:
    assert explain.target_index("2", marker_model.classes) == marker_model.classes.index("2")
    assert explain.target_index(None, marker_model.classes) is None
    with pytest.raises(explain.ExplainError, match="neither a class label"):
        explain.target_index("cat", marker_model.classes)
    image = validation_set(1, seed=5).images[0]
    other = explain.explain_image(marker_model, image, explain.ExplainOptions(target=3))
    assert other.target["index"] == 3


def _model(network: dict, side: int, classes: int = 10) -> inference.LoadedModel:
    torch.manual_seed(0)
    net = build_model(network, classes, 1, side, side)
    return inference.from_parts(
        network,
        [str(i) for i in range(classes)],
        net.state_dict(),
        height=side,
        width=side,
        channels=1,
        mean=None,
        crop=None,
    )


def test_built_in_networks_use_their_own_layer_where_the_locator_is_wrong() -> None:
    from torchcam.methods._utils import locate_candidate_layer

    vgg = _model({"kind": "standard", "name": "vgg16"}, 32)
    located = locate_candidate_layer(vgg.classifier.net, (1, 32, 32))
    ours = explain.find_target_layer(vgg)
    print(f"vgg16 at 32 px: torchcam's locator {located!r}, ours {ours}")
    assert located == "avgpool"  # a 1x1 map upsampled to 7x7: what the map must avoid
    assert ours.name.startswith("features.")
    assert ours.size == (2, 2)
    resnet = explain.find_target_layer(_model({"kind": "standard", "name": "resnet18"}, 28))
    assert resnet.name == "layer3"
    assert "coarse" in (resnet.note or "")
    lenet = explain.find_target_layer(_model({"kind": "standard", "name": "lenet"}, 28))
    assert lenet == explain.TargetLayer("2", (8, 8))
    vit = _model({"kind": "standard", "name": "vit_b_16"}, 32)
    with pytest.raises(explain.ExplainError, match="vision transformer"):
        explain.explain_image(vit, np.zeros((32, 32, 1), np.uint8), explain.ExplainOptions())
    pixels = explain.explain_image(
        vit, np.zeros((32, 32, 1), np.uint8), explain.ExplainOptions("occlusion", window=8)
    )
    assert pixels.layer is None
    assert pixels.heat.shape == (32, 32)


@pytest.mark.parametrize(
    ("name", "side"), [("lenet", 28), ("resnet18", 28)], ids=["lenet", "resnet18"]
)
def test_layer_views_cover_every_layer_with_whole_histograms_and_pictures(
    name: str, side: int
) -> None:
    model = _model({"kind": "standard", "name": name}, side)
    net = model.classifier.net
    image = np.random.default_rng(0).integers(0, 256, (side, side, 1), dtype=np.uint8)
    started = time.perf_counter()
    probs, views = layers.layer_views(model, image)
    ms = (time.perf_counter() - started) * 1000
    leaves = [n for n, m in net.named_modules() if n and not list(m.children())]
    print(f"{name}: {len(views)} layer views in {ms:.0f} ms")
    assert [v["name"] for v in views] == leaves  # every leaf ran once here, in this order
    assert probs.shape == (1, 10)
    np.testing.assert_allclose(probs, model.predict(image[None]), rtol=1e-5, atol=1e-6)
    assert sum(v["param_count"] for v in views) == sum(p.numel() for p in net.parameters())
    for view in views:
        LayerView.model_validate(
            {**view, "activations_png": "x", "filters_png": None}
        )  # the API's schema holds it
        stats = view["activations"]
        assert sum(stats["histogram"]["counts"]) + stats["nonfinite"] == int(
            np.prod(view["output_shape"])
        )
        assert len(stats["histogram"]["counts"]) == 20
        if view["weights"] is not None:
            w = view["weights"]
            assert sum(w["histogram"]["counts"]) == int(np.prod(w["shape"]))
        picture = Image.open(io.BytesIO(view["activations_png"]))
        picture.load()
        assert max(picture.size) <= 256
    with_filters = [v for v in views if v["filters_png"] is not None]
    assert [v["type"] for v in with_filters] == ["Conv2d"]
    assert with_filters[0]["name"] == views[0]["name"]  # the first layer's filters
    Image.open(io.BytesIO(with_filters[0]["filters_png"])).load()
    if name == "resnet18":
        assert {v["calls"] for v in views if v["name"].endswith(".relu")} == {2}


def test_statistics_of_a_constant_and_of_a_nan_tensor() -> None:
    flat = layers.stats(torch.full((3, 4), 2.0))
    assert flat["histogram"]["counts"][10] == 12
    assert flat["std"] == 0.0
    holes = layers.stats(torch.tensor([1.0, float("nan"), float("inf"), 3.0]))
    assert holes["nonfinite"] == 2
    assert sum(holes["histogram"]["counts"]) == 2
    assert (holes["min"], holes["max"]) == (1.0, 3.0)


def test_the_first_layer_filters_of_an_rgb_network_are_colour() -> None:
    conv = torch.nn.Conv2d(3, 8, 5)
    picture = Image.open(io.BytesIO(layers.filters_png(conv.weight)))
    assert picture.mode == "RGB"
    assert picture.size[0] >= 64
