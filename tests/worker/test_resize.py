"""DIGITS resize geometry: pixel-level checks of every mode on non-square images."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from shared import images
from worker.datasets.resize import RESIZE_MODES, convert_channels, resize_image


def halves(width: int, height: int, vertical: bool = True) -> Image.Image:
    """Left half black, right half white (vertical=True) or top black, bottom white."""
    arr = np.zeros((height, width), dtype=np.uint8)
    if vertical:
        arr[:, width // 2 :] = 255
    else:
        arr[height // 2 :, :] = 255
    return Image.fromarray(arr, "L")


def rng() -> np.random.Generator:
    return np.random.default_rng(1234)


def test_modes_exported() -> None:
    assert RESIZE_MODES == ("squash", "crop", "fill", "half_crop")


def test_same_shape_is_returned_unchanged() -> None:
    arr = np.random.default_rng(0).integers(0, 256, (20, 40), dtype=np.uint8)
    for mode in RESIZE_MODES:
        out = resize_image(Image.fromarray(arr), 40, 20, 1, mode, rng())
        assert out.dtype == np.uint8
        np.testing.assert_array_equal(out, arr)


def test_crop_wide_keeps_center_columns() -> None:
    out = resize_image(halves(40, 20), 20, 20, 1, "crop", rng())
    assert out.shape == (20, 20)
    # the resize is to 40x20 (no change); columns 10..29 are kept
    assert (out[:, :10] == 0).all()
    assert (out[:, 10:] == 255).all()


def test_crop_tall_keeps_center_rows() -> None:
    out = resize_image(halves(20, 40, vertical=False), 20, 20, 1, "crop", rng())
    assert out.shape == (20, 20)
    assert (out[:10] == 0).all()
    assert (out[10:] == 255).all()


def test_crop_scaled_matches_pil_then_center_slice() -> None:
    src = Image.fromarray(np.random.default_rng(5).integers(0, 256, (30, 90), dtype=np.uint8))
    out = resize_image(src, 20, 10, 1, "crop", rng())
    # width_ratio 4.5 > height_ratio 3: resize to 30x10, start round(5.0) = 5
    expected = np.asarray(src.resize((30, 10), Image.BILINEAR))[:, 5:25]
    np.testing.assert_array_equal(out, expected)


def test_fill_wide_pads_rows_with_noise() -> None:
    gray = Image.fromarray(np.full((20, 40), 128, dtype=np.uint8))
    out = resize_image(gray, 20, 20, 1, "fill", rng())
    assert out.shape == (20, 20)
    # resized to 20x10, 5 rows of noise above and below
    assert (out[5:15] == 128).all()
    top, bottom = out[:5], out[15:]
    assert len(np.unique(top)) > 10
    assert len(np.unique(bottom)) > 10
    assert int(top.max()) < 255
    np.testing.assert_array_equal(top, bottom)  # DIGITS puts the same noise block on both ends


def test_fill_tall_pads_columns_with_noise() -> None:
    gray = Image.fromarray(np.full((40, 20), 77, dtype=np.uint8))
    out = resize_image(gray, 20, 20, 1, "fill", rng())
    assert out.shape == (20, 20)
    assert (out[:, 5:15] == 77).all()
    assert len(np.unique(out[:, :5])) > 10
    assert len(np.unique(out[:, 15:])) > 10


def test_fill_odd_padding_is_evened() -> None:
    # 40x21 into 20x20: h/width_ratio = 10.5 -> round 10 -> (20-10) even; 40x22 -> 11 -> 12
    gray = Image.fromarray(np.full((22, 40), 50, dtype=np.uint8))
    out = resize_image(gray, 20, 20, 1, "fill", rng())
    assert (out[4:16] == 50).all()
    assert not (out[:4] == 50).all()
    assert not (out[16:] == 50).all()


def test_half_crop_geometry() -> None:
    src = halves(40, 20)
    out = resize_image(src, 20, 20, 1, "half_crop", rng())
    assert out.shape == (20, 20)
    # ratio (2 + 1) / 2 = 1.5: 27x13 -> height made 14 (even padding); start round(3.5) = 4
    expected = np.asarray(src.resize((27, 14), Image.BILINEAR))[:, 4:24]
    np.testing.assert_array_equal(out[3:17], expected)
    # the black/white edge sits at x = 13.5 of the 27 resized columns, 9.5 after the crop
    assert (out[3:17, :8] == 0).all()
    assert (out[3:17, 12:] == 255).all()
    # 3 noise rows on each end
    assert len(np.unique(out[:3])) > 10
    assert len(np.unique(out[17:])) > 10


def test_half_crop_tall() -> None:
    src = halves(20, 40, vertical=False)
    out = resize_image(src, 20, 20, 1, "half_crop", rng())
    expected = np.asarray(src.resize((14, 27), Image.BILINEAR))[4:24, :]
    np.testing.assert_array_equal(out[:, 3:17], expected)
    assert (out[:8, 3:17] == 0).all()
    assert (out[12:, 3:17] == 255).all()


def test_squash_vertical_stripes() -> None:
    arr = np.zeros((20, 40), dtype=np.uint8)
    arr[:, 10:20] = 255
    arr[:, 30:40] = 255
    src = Image.fromarray(arr)
    out = resize_image(src, 20, 20, 1, "squash", rng())
    np.testing.assert_array_equal(out, np.asarray(src.resize((20, 20), Image.BILINEAR)))
    assert (out == out[0]).all()  # stripes stay vertical
    assert (out[:, :4] == 0).all()
    assert (out[:, 6:9] == 255).all()
    assert (out[:, 11:14] == 0).all()
    assert (out[:, 16:] == 255).all()


def test_equal_ratios_squash_in_every_mode() -> None:
    src = halves(40, 20)
    expected = np.asarray(src.resize((20, 10), Image.BILINEAR))
    for mode in RESIZE_MODES:
        np.testing.assert_array_equal(resize_image(src, 20, 10, 1, mode, rng()), expected)


def test_noise_is_seeded() -> None:
    gray = Image.fromarray(np.full((20, 40), 9, dtype=np.uint8))
    a = resize_image(gray, 20, 20, 1, "fill", np.random.default_rng(7))
    b = resize_image(gray, 20, 20, 1, "fill", np.random.default_rng(7))
    np.testing.assert_array_equal(a, b)


def test_rgb_fill_noise_has_three_channels() -> None:
    rgb = Image.new("RGB", (40, 20), (10, 20, 30))
    out = resize_image(rgb, 20, 20, 3, "fill", rng())
    assert out.shape == (20, 20, 3)
    assert (out[5:15] == (10, 20, 30)).all()


def test_rgb_to_gray() -> None:
    arr = np.random.default_rng(3).integers(0, 256, (12, 16, 3), dtype=np.uint8)
    img = Image.fromarray(arr, "RGB")
    out = resize_image(img, 16, 12, 1, "squash", rng())
    assert out.shape == (12, 16)
    np.testing.assert_array_equal(out, np.asarray(img.convert("L")))


def test_gray_to_rgb() -> None:
    arr = np.random.default_rng(4).integers(0, 256, (12, 16), dtype=np.uint8)
    out = resize_image(Image.fromarray(arr, "L"), 16, 12, 3, "squash", rng())
    assert out.shape == (12, 16, 3)
    for c in range(3):
        np.testing.assert_array_equal(out[:, :, c], arr)


def test_transparency_goes_white() -> None:
    rgba = Image.new("RGBA", (4, 4), (0, 0, 0, 0))
    rgba.putpixel((0, 0), (10, 20, 30, 255))
    out = np.asarray(convert_channels(rgba, 3))
    assert tuple(out[0, 0]) == (10, 20, 30)
    assert (out[1:] == 255).all()
    pal = Image.new("P", (4, 4), 1)
    pal.putpalette([0, 0, 0, 200, 0, 0])
    pal.info["transparency"] = 1
    assert (np.asarray(convert_channels(pal, 3)) == 255).all()
    la = Image.new("LA", (4, 4), (0, 0))
    assert (np.asarray(convert_channels(la, 1)) == 255).all()


def test_sixteen_bit_is_scaled() -> None:
    arr = np.array([[0, 256, 65535, 32768]], dtype=np.uint16)
    img = Image.fromarray(arr)
    assert img.mode == "I;16"
    out = resize_image(img, 4, 1, 1, "squash", rng())
    np.testing.assert_array_equal(out, [[0, 1, 255, 128]])


def test_bad_mode_rejected() -> None:
    with pytest.raises(ValueError, match="resize mode"):
        resize_image(halves(4, 4), 2, 2, 1, "stretch", rng())


# ----------------------------------------------------------------------------- bounded resizing


def random_image(rng: np.random.Generator, width: int, height: int, rgb: bool) -> Image.Image:
    shape = (height, width, 3) if rgb else (height, width)
    return Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8))


def test_box_path_matches_resize_then_crop_within_one_grey_level() -> None:
    """Resizing only the kept box gives DIGITS's resize-then-slice to within 1 level."""
    rng = np.random.default_rng(11)
    differing = total = worst = 0
    for case in range(200):
        w, h = int(rng.integers(2, 120)), int(rng.integers(2, 120))
        img = random_image(rng, w, h, rgb=bool(case % 2))
        width, height = int(rng.integers(2, 60)), int(rng.integers(2, 60))
        width_ratio, height_ratio = w / width, h / height
        if width_ratio == height_ratio:
            continue
        wide = width_ratio > height_ratio
        if wide:
            resize, length = (round(w / height_ratio), height), width
            start = round((resize[0] - width) / 2.0)
        else:
            resize, length = (width, round(h / width_ratio)), height
            start = round((resize[1] - height) / 2.0)
        exact = images._resized_part(img, resize, start, length, wide, exact_max_pixels=1 << 40)
        boxed = images._resized_part(img, resize, start, length, wide, exact_max_pixels=0)
        assert exact.shape == boxed.shape
        diff = np.abs(exact.astype(int) - boxed.astype(int))
        differing += int((diff > 0).sum())
        total += diff.size
        worst = max(worst, int(diff.max()))
    print(f"box path vs resize-then-crop: {differing} of {total} values differ, at most by {worst}")
    assert worst <= 1


def test_large_crop_resizes_only_the_box() -> None:
    """A crop whose full resize is over EXACT_MAX_PIXELS still matches the full resize."""
    src = random_image(np.random.default_rng(3), 3000, 40, rgb=False)
    out = resize_image(src, 512, 512, 1, "crop", rng())
    # resize to 38400x512 (19.7M pixels, over the limit), keep columns 18944..19455
    assert images.EXACT_MAX_PIXELS < 38400 * 512
    full = np.asarray(src.resize((38400, 512), Image.BILINEAR))[:, 18944:19456]
    diff = np.abs(out.astype(int) - full.astype(int))
    print(f"3000x40 crop to 512x512: {(diff > 0).sum()} of {diff.size} differ, max {diff.max()}")
    assert out.shape == (512, 512)
    assert diff.max() <= 1


def test_thin_tall_squash_filters_columns_first() -> None:
    """1x200000 to 64x64 is made in two passes (64 x 200000 would be the intermediate)."""
    col = np.random.default_rng(8).integers(0, 256, (200_000, 1), dtype=np.uint8)
    src = Image.fromarray(col)
    out = resize_image(src, 64, 64, 1, "squash", rng())
    expected = np.asarray(src.resize((1, 64), Image.BILINEAR).resize((64, 64), Image.BILINEAR))
    np.testing.assert_array_equal(out, expected)
    one_pass = np.asarray(src.resize((64, 64), Image.BILINEAR))
    print(f"two passes vs Pillow's one: max difference {np.abs(out - one_pass.astype(int)).max()}")
    assert np.abs(out.astype(int) - one_pass.astype(int)).max() <= 1
