"""Names of the profiler ranges around evaluation's stages (`torch.profiler.record_function`).

They cost next to nothing while no profiler runs and show in any torch.profiler trace of an
evaluation, so a trace says where each batch's time went; benchmarks/bench.py's `--timeline` reads
its per-batch timeline from them.
"""

ENCODE_BATCH = "hwocr.encode_batch"  # one batch's images read and run through the processor, in one call
ENCODE_SLICES = "hwocr.encode_batch_in_slices"  # ... as slices in threads, then joined
JOIN_PAGEABLE = "hwocr.join_slices"  # the slices joined into one batch
JOIN_PINNED = "hwocr.join_slices_pinned"  # ... into page-locked memory
GENERATE_BATCH = "hwocr.generate_batch"  # an encoded batch to its texts
TO_DEVICE = "hwocr.to_device"  # the batch's tensors to the model's device and dtype
VISION_TOWER = "hwocr.vision_tower"  # the vision tower over the batch's views (chunked towers)
PREFILL = "hwocr.prefill"  # the prompt and images through the model (graphed decoding's path)
DECODE_STEP = "hwocr.decode_step"  # one generated token (graphed decoding's path)
