"""DeepSeek-OCR v1 inputs, built by hwocr: the remote code ships no processor, only `infer()`.

v1's forward takes, per sample, `images=(tiles, global_view)`, a boolean `images_seq_mask` marking
the image-token positions of `input_ids`, and `images_spatial_crop=[tiles across, tiles down]`.
This module builds them exactly as the hub code's `infer()` does, for batches: views are normalised
to [-1, 1]; one view of side S is S/64 rows of S/64 features plus a newline feature each; a view
separator follows the global view; prompts are BOS + image tokens + the text after `<image>`.

Modes (image side, tiles): tiny 512, small 640 (squashed to a square), base 1024, large 1280
(letterboxed in grey), gundam (a 1024 letterboxed global view plus 640-pixel tiles of the squashed
image in a 2..9 grid chosen by aspect ratio; none for images within 640x640).
"""

from pathlib import Path

import torch
from PIL import Image, ImageOps
from transformers import AutoTokenizer, BatchFeature

from hwocr.io import write_json

IMAGE_TOKEN = "<image>"
PIXELS_PER_FEATURE = 64  # SAM's 16-pixel patches, then 4x downsampling
GREY = (127, 127, 127)  # v1's padding colour: the normalisation mean
SQUASH_MAX = 640  # views up to this side are resized to a square, larger ones letterboxed
# mode -> (global view side, None = model.image_size; tiles). gundam tiles at model.tile_size.
MODES = {
    "tiny": (512, False),
    "small": (640, False),
    "base": (None, False),
    "large": (1280, False),
    "gundam": (None, True),
}
TILE_GRID = (2, 9)  # gundam: the fewest and most tiles


class Ocr1Processor:
    """v1's input preparation for batches (training and generation), with hwocr's image modes."""

    def __init__(self, tokenizer, image_mode: str = "base", image_size: int = 1024, tile_size: int = 640):
        if image_mode not in MODES:
            raise ValueError(
                f"unknown DeepSeek-OCR v1 image mode {image_mode!r}; choose from {sorted(MODES)}"
            )
        self.tokenizer = tokenizer
        self.image_mode = image_mode
        self.image_size = image_size
        self.tile_size = tile_size
        self.image_token_id = tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
        if self.image_token_id in (None, tokenizer.unk_token_id):
            raise ValueError(
                f"the tokenizer has no {IMAGE_TOKEN} token: is this a DeepSeek-OCR v1 checkpoint?"
            )

    @classmethod
    def from_pretrained(
        cls,
        source: str,
        revision: str | None = None,
        image_mode: str = "base",
        image_size: int = 1024,
        tile_size: int = 640,
        trust_remote_code: bool = False,
    ) -> "Ocr1Processor":
        """The tokenizer is a plain LlamaTokenizerFast: it never needs the remote code, and asking for
        it (trust_remote_code=True) makes transformers 5 import v1's modeling file, which fails there.
        The argument is accepted for load_processor's sake and ignored."""
        del trust_remote_code
        tokenizer = AutoTokenizer.from_pretrained(source, revision=revision, trust_remote_code=False)
        tokenizer.padding_side = "left"  # batched generation
        return cls(tokenizer, image_mode, image_size, tile_size)

    def save_pretrained(self, directory: str) -> None:
        self.tokenizer.save_pretrained(directory)
        settings = {"image_mode": self.image_mode, "image_size": self.image_size, "tile_size": self.tile_size}
        write_json(Path(directory) / "hwocr_ocr1_processor.json", settings)

    # -- images ---------------------------------------------------------------------------------

    @property
    def global_side(self) -> int:
        return MODES[self.image_mode][0] or self.image_size

    @property
    def crops(self) -> bool:
        return MODES[self.image_mode][1]

    def tile_grid(self, width: int, height: int) -> tuple[int, int]:
        """(tiles across, tiles down): (1, 1) = no tiles."""
        if not self.crops or (width <= self.tile_size and height <= self.tile_size):
            return 1, 1
        return closest_grid(width, height, self.tile_size)

    def image_token_count(self, width: int, height: int) -> int:
        """Image tokens for an upright image of this size: v1's global view, separator and tiles."""
        return self.grid_token_count(self.tile_grid(width, height))

    def grid_token_count(self, grid: tuple[int, int]) -> int:
        across, down = grid
        count = view_tokens(self.global_side) + 1  # + the view separator
        if (across, down) != (1, 1):
            per_tile = self.tile_size // PIXELS_PER_FEATURE
            count += (per_tile * across + 1) * per_tile * down
        return count

    def views(self, image: Image.Image) -> tuple[torch.Tensor, torch.Tensor, tuple[int, int]]:
        """(tiles [n, 3, t, t] or zeros [1, 3, S, S], global view [1, 3, S, S], grid)."""
        image = ImageOps.exif_transpose(image).convert("RGB")
        side = self.global_side
        grid = self.tile_grid(*image.size)
        square = image.resize((side, side)) if side <= SQUASH_MAX and not self.crops else image
        global_view = _to_tensor(ImageOps.pad(square, (side, side), color=GREY))[None]
        if grid == (1, 1):
            return torch.zeros(1, 3, side, side), global_view, grid
        across, down, tile = grid[0], grid[1], self.tile_size
        resized = image.resize((tile * across, tile * down))
        tiles = [
            _to_tensor(resized.crop((x * tile, y * tile, (x + 1) * tile, (y + 1) * tile)))
            for y in range(down)
            for x in range(across)
        ]
        return torch.stack(tiles), global_view, grid

    # -- text -----------------------------------------------------------------------------------

    def prompt_ids(self, prompt: str, n_image_tokens: int) -> tuple[list[int], list[bool]]:
        """BOS + text before <image> + image tokens + text after; and the image-position mask."""
        if prompt.count(IMAGE_TOKEN) != 1:
            raise ValueError(f"the prompt must hold exactly one {IMAGE_TOKEN}: {prompt!r}")
        before, after = prompt.strip().split(IMAGE_TOKEN)
        encode = lambda text: self.tokenizer(text, add_special_tokens=False)["input_ids"]  # noqa: E731
        ids = [self.tokenizer.bos_token_id, *encode(before)]
        mask = [False] * len(ids)
        ids += [self.image_token_id] * n_image_tokens
        mask += [True] * n_image_tokens
        tail = encode(after)
        return ids + tail, mask + [False] * len(tail)

    def __call__(self, images, text, padding: bool = False, return_tensors: str = "pt", **_) -> BatchFeature:
        """One row per image, left-padded (generation). Keys: input_ids, attention_mask, images,
        images_seq_mask, images_spatial_crop."""
        texts = [text] * len(images) if isinstance(text, str) else list(text)
        rows, masks, views, grids = [], [], [], []
        for image, prompt in zip(images, texts, strict=True):
            tiles, global_view, grid = self.views(image)
            ids, mask = self.prompt_ids(prompt, self.grid_token_count(grid))  # grid of the upright image
            rows.append(ids)
            masks.append(mask)
            views.append((tiles, global_view))
            grids.append(grid)
        length = max(len(r) for r in rows)
        if not padding and any(len(r) != length for r in rows):
            raise ValueError("prompts of different lengths need padding=True")
        pad = self.tokenizer.pad_token_id
        return BatchFeature(
            {
                "input_ids": torch.tensor([[pad] * (length - len(r)) + r for r in rows]),
                "attention_mask": torch.tensor([[0] * (length - len(r)) + [1] * len(r) for r in rows]),
                "images_seq_mask": torch.tensor([[False] * (length - len(m)) + m for m in masks]),
                "images_spatial_crop": torch.tensor(grids, dtype=torch.long),
                "images": views,
            }
        )


def view_tokens(side: int) -> int:
    rows = side // PIXELS_PER_FEATURE
    return rows * (rows + 1)  # a newline feature ends each row


def closest_grid(width: int, height: int, tile: int) -> tuple[int, int]:
    """v1's tile grid: the (across, down) with 2..9 tiles whose aspect ratio is nearest the image's;
    on a tie the larger grid wins when the image has more than half its pixels."""
    low, high = TILE_GRID
    grids = sorted(
        {(a, d) for a in range(1, high + 1) for d in range(1, high + 1) if low <= a * d <= high},
        key=lambda grid: grid[0] * grid[1],
    )
    aspect, best, best_diff = width / height, (1, 1), float("inf")
    for across, down in grids:
        diff = abs(aspect - across / down)
        if diff < best_diff:
            best, best_diff = (across, down), diff
        elif diff == best_diff and width * height > 0.5 * tile * tile * across * down:
            best = (across, down)
    return best


def _to_tensor(image: Image.Image) -> torch.Tensor:
    """HWC uint8 -> CHW float in [-1, 1] (v1's Normalize(mean=0.5, std=0.5))."""
    array = torch.frombuffer(bytearray(image.tobytes()), dtype=torch.uint8).view(image.height, image.width, 3)
    return array.permute(2, 0, 1).float().div(255.0).sub(0.5).div(0.5)
