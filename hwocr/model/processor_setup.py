"""What hwocr knows about a DeepSeek-OCR-2 processor that load_processor set up, kept beside it.

The processor is transformers' object; hwocr's settings for calling it (the per-call arguments, the
small mode's squash, the 8-bit pixel table) live here, keyed weakly by the processor, so they go
when it goes. A copy made with `copy_processor` shares them.
"""

import copy
import weakref
from dataclasses import dataclass, field

import torch


@dataclass
class ProcessorSetup:
    call_kwargs: dict  # passed on every call (see load_processor)
    squash: int | None = None  # small mode: images resized to this square side first
    # model/pixels.py's lookup table for 8-bit views: unset until first asked for, None if unusable
    pixel_table: torch.Tensor | None = field(default=None, repr=False)
    pixel_table_built: bool = False


_SETUPS: "weakref.WeakKeyDictionary[object, ProcessorSetup]" = weakref.WeakKeyDictionary()


def set_up(processor, setup: ProcessorSetup) -> None:
    _SETUPS[processor] = setup


def setup_of(processor) -> ProcessorSetup | None:
    """The setup load_processor gave `processor`; None for any other processor (v1's among them)."""
    return _SETUPS.get(processor)


def copy_processor(processor):
    """A deep copy of `processor` with the same setup (its pixel table shared, not rebuilt)."""
    twin = copy.deepcopy(processor)
    if (setup := setup_of(processor)) is not None:
        set_up(twin, setup)
    return twin
