"""Where transformers' DeepSeek-OCR-2 image processor differs from DeepSeek's own preprocessing,
hwocr makes it follow DeepSeek's (the model saw DeepSeek's views in training).

- Global view placement. DeepSeek pads with PIL's `ImageOps.pad`, which centres the resized image
  at `round(margin / 2)` (half to even); the port puts it at `margin // 2`. For an odd margin with
  an odd half (a 1603x120 line: margin 947) the view lands one pixel off.
- The `small` view (infer(base_size, image_size=768, crop_mode=False)). DeepSeek's `infer()`
  resizes any image to a 768 px square (`image.resize((768, 768))`, no padding); the port keeps
  the aspect ratio and pads. (`base`, infer(1024, 1024, False), pads in both.)
- EXIF orientation. `infer()` opens images with `ImageOps.exif_transpose` (as hwocr's v1 path does).

tests/test_official_ocr2.py measures both against DeepSeek's code; tests/test_views.py checks
them without it.
"""

import torch
from PIL import Image, ImageOps


def global_view_shift(width: int, height: int, side: int) -> tuple[int, int]:
    """(shift, axis) that moves the port's global view to where `ImageOps.pad` puts it.

    The port scales the longer side to `side` (`round(short * side / long)`, which equals PIL's
    `round(short / long * side)` for every size up to 3000 px) and pads `margin // 2` before."""
    if width == height:
        return 0, -1
    long, short = max(width, height), min(width, height)
    margin = side - round(short * (side / long))
    return round(margin / 2) - margin // 2, (-2 if width > height else -1)


def follow_pil_centering(pixel_values, image_sizes: list[tuple[int, int]], side: int):
    """The port's global views, each rolled by its one-pixel difference from PIL's centring.

    Only background (the normalised pad colour) moves from one edge to the other."""
    views = [
        _roll(view, *global_view_shift(width, height, side))
        for view, (width, height) in zip(pixel_values, image_sizes, strict=True)
    ]
    return torch.stack(views) if isinstance(pixel_values, torch.Tensor) else views


def _roll(view, shift: int, axis: int):
    if not shift:
        return view
    if isinstance(view, torch.Tensor):
        return torch.roll(view, shift, dims=axis)
    import numpy as np

    return np.roll(view, shift, axis=axis)


def squash(images: list[Image.Image], side: int) -> list[Image.Image]:
    """DeepSeek's no-crop view at `side` <= 768 px: the whole image resized to a square (bicubic,
    PIL's default, as in `infer()`)."""
    return [image.resize((side, side), Image.Resampling.BICUBIC) for image in images]


def upright(images: list[Image.Image]) -> list[Image.Image]:
    """Images as shown (EXIF orientation applied), as infer()'s load_image opens them."""
    return [ImageOps.exif_transpose(image) for image in images]
