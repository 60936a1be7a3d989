"""shared.images: the one owner of the image rules (formats, decoding, limits, import roots)."""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from shared import images


def png(width: int, height: int) -> bytes:
    buf = io.BytesIO()
    Image.new("L", (width, height), 7).save(buf, "PNG")
    return buf.getvalue()


def test_the_rules_are_one_set() -> None:
    assert set(images.DECODERS) <= set(Image.OPEN)
    assert {*images.DECODERS, "MPO"} == images.ALLOWED_FORMATS
    assert {".png", ".jpg", ".jpeg", ".tif", ".mpo"} <= images.IMAGE_EXTENSIONS
    assert images.is_image_name("Cat.JPG")
    assert not images.is_image_name("cat.txt")
    assert images.RESIZE_MODES == ("squash", "crop", "fill", "half_crop")


def test_importing_shared_images_loads_no_torch() -> None:
    code = "import sys, shared.images; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_decode_bytes_and_path_alike(tmp_path: Path) -> None:
    data = png(5, 4)
    (tmp_path / "a.png").write_bytes(data)
    for source in (data, tmp_path / "a.png", str(tmp_path / "a.png")):
        img = images.decode(source, max_pixels=100)
        assert (img.size, img.format, img.mode) == ((5, 4), "PNG", "L")


def test_decode_refuses_over_the_pixel_limit_before_decoding() -> None:
    with pytest.raises(images.ImageError) as err:
        images.decode(png(20, 10), max_pixels=199)
    assert err.value.message == (
        "image too large (20x10 pixels, over the limit of 199): "
        "refused as a possible decompression bomb"
    )
    assert str(err.value) == err.value.message
    assert isinstance(err.value, ValueError)


def test_decode_tries_only_the_allowed_decoders() -> None:
    buf = io.BytesIO()
    Image.new("RGB", (4, 4)).save(buf, "TGA")
    with Image.open(io.BytesIO(buf.getvalue())) as img:
        assert img.format == "TGA"  # Pillow reads it; the service does not
    with pytest.raises(images.ImageError, match="not a readable PNG, JPEG"):
        images.decode(buf.getvalue(), max_pixels=100)


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda d: d / "missing.png", "file not found"),
        (lambda d: d, "not a file"),
    ],
)
def test_decode_file_errors_name_no_path(tmp_path: Path, make: object, message: str) -> None:
    assert callable(make)
    with pytest.raises(images.ImageError) as err:
        images.decode(make(tmp_path), max_pixels=100)
    assert err.value.message == message


def test_decode_error_details_lose_reprs_and_paths(tmp_path: Path) -> None:
    buf = io.BytesIO()
    noise = np.random.default_rng(0).integers(0, 256, (40, 40), dtype=np.uint8)
    Image.fromarray(noise).save(buf, "PNG")
    path = tmp_path / "cut.png"
    path.write_bytes(buf.getvalue()[:900])
    with pytest.raises(images.ImageError) as err:
        images.decode(path, max_pixels=10_000)
    print(err.value.message)
    assert err.value.message.startswith("corrupt or unreadable image (")
    assert str(tmp_path) not in err.value.message
    assert images._detail(OSError(f"cannot read {path} via <_io.BytesIO object at 0x7f1>")) == (
        "cannot read  via"
    )


def test_prepare_gives_height_width_channels() -> None:
    img = images.decode(png(30, 20), max_pixels=10_000)
    for channels in (1, 3):
        arr = images.prepare(img, 8, 6, channels, "crop")
        assert arr.shape == (6, 8, channels)
        assert arr.dtype == np.uint8


def test_prepare_refuses_an_unknown_mode_clearly() -> None:
    img = images.decode(png(30, 20), max_pixels=10_000)
    with pytest.raises(images.ImageError, match="resize mode must be one of"):
        images.prepare(img, 8, 6, 3, "stretch")
    with pytest.raises(images.ImageError, match="channels must be 1 or 3"):
        images.prepare(img, 8, 6, 4, "squash")


# ----------------------------------------------------------------------------- import roots


def test_overlaps_data_dir(tmp_path: Path) -> None:
    data = tmp_path / "srv" / "digits-data"
    (data / "datasets" / "x").mkdir(parents=True)
    (tmp_path / "imports" / "cats").mkdir(parents=True)
    (tmp_path / "alias").symlink_to(tmp_path / "srv", target_is_directory=True)
    assert images.overlaps_data_dir(tmp_path / "srv", data)  # holds it
    assert images.overlaps_data_dir(tmp_path, data)
    assert images.overlaps_data_dir(data, data)
    assert images.overlaps_data_dir(data / "datasets" / "x", data)  # inside it
    assert images.overlaps_data_dir(tmp_path / "alias", data)  # through a link
    assert not images.overlaps_data_dir(tmp_path / "imports", data)
    assert not images.overlaps_data_dir(tmp_path / "imports" / "cats", data)
    assert not images.overlaps_data_dir(tmp_path / "srv" / "digits", data)  # a name prefix
