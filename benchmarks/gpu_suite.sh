#!/usr/bin/env bash
# Runs on the lent GPU machine: benchmarks/gpu_suite.sh PHASE...  (results to $OUT or benchmarks/results)
# Wheels that the GPU image lacks (bitsandbytes) travel in .whl/ (see benchmarks/README.md).
set -u
export PYTHONUNBUFFERED=1 HWOCR_BENCH_DIR=${HWOCR_BENCH_DIR:-/tmp/hwocr-bench} TQDM_DISABLE=1
if ls .whl/*.whl >/dev/null 2>&1 && ! python3 -c "import bitsandbytes, rapidfuzz" 2>/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
fi
export PYTHONPATH=.:/tmp/site
RES=${OUT:-benchmarks/results}
REGISTERED=pinned_use_cuda_host_register:True,pinned_num_register_threads:8
mkdir -p "$RES"
b() { local name=$1; shift; echo "### $name"; timeout ${LIMIT:-300} python3 benchmarks/bench.py --name "$name" --json "$RES/$name.json" "$@" 2>&1 | grep -v "Warning\|warn(" ; }
for phase in "$@"; do case $phase in
  paddleocr_vl_memory)  # PaddleOCR-VL-0.9B at full size, random weights, 1600x120 lines: LoRA on the language
    # model at the T4 profile (fp16, 4-bit): peak memory (these may run beside other work; their speed then does not count)
    P="--model paddleocr_vl --memory-profile"
    b paddleocr_vl_t4_train_b8 $P --dtype fp16 --load-in-4bit --batch 8 --steps 6
    b paddleocr_vl_t4_train_b16 $P --dtype fp16 --load-in-4bit --batch 16 --steps 6 ;;
  paddleocr_vl)  # the same in bf16, then generation in images/s (the plain path): speed, the GPU to itself
    b paddleocr_vl_bf16_train_b32 --model paddleocr_vl --memory-profile --dtype bf16 --batch 32 --steps 8
    b paddleocr_vl_t4_generate_b32 --model paddleocr_vl --task generate --dtype fp16 --load-in-4bit --gen-images 128 --gen-batch 32 --new-tokens 48
    b paddleocr_vl_bf16_generate --model paddleocr_vl --task generate --dtype bf16 --gen-images 512 --new-tokens 48 --check-unbatched 4 ;;
  paddleocr_vl_full)  # the lines_paddleocr_vl preset's full fine-tuning, bf16, its batch of 8
    b paddleocr_vl_bf16_full_b8 --model paddleocr_vl --memory-profile --dtype bf16 --batch 8 --steps 6 --full-finetune ;;
  t4mem)
    b t4_train_baseline_b8 --dtype fp16 --load-in-4bit --batch 8 --steps 4 --recipe baseline --memory-profile
    b t4_train_optimized_b8 --dtype fp16 --load-in-4bit --batch 8 --steps 4 --recipe optimized --memory-profile ;;
  t4big)
    b t4_train_optimized_b16 --dtype fp16 --load-in-4bit --batch 16 --steps 4 --recipe optimized --memory-profile ;;
  h100speed)
    b h100_train_optimized_b32 --dtype bf16 --batch 32 --steps 8 --recipe optimized --profile
    b h100_train_optimized_b64_nockpt --dtype bf16 --batch 64 --steps 6 --recipe optimized --no-grad-ckpt ;;
  h100base)
    b h100_train_baseline_b32 --dtype bf16 --batch 32 --steps 5 --recipe baseline ;;
  fp16steps)
    b t4_fp16_50steps_optimized_b8 --dtype fp16 --load-in-4bit --batch 8 --steps 52 --warmup 2 --recipe optimized ;;
  gen)
    b h100_generate_optimized --task generate --dtype bf16 --gen-images 512 --new-tokens 48 --check-unbatched 4 ;;
  genprof)
    b h100_generate_profile_b128 --task generate --dtype bf16 --gen-images 128 --gen-batch 128 --new-tokens 48 --profile ;;
  genbatch)
    b h100_generate_b256 --task generate --dtype bf16 --gen-images 512 --gen-batch 256 --new-tokens 48 --profile
    b h100_generate_b512 --task generate --dtype bf16 --gen-images 1024 --gen-batch 512 --new-tokens 48 ;;
  genidentity)
    b h100_generate_identity_fp32 --task generate --dtype fp32 --gen-images 16 --gen-batch 16 --new-tokens 48 --check-unbatched 16
    b h100_generate_identity_bf16 --task generate --dtype bf16 --gen-images 16 --gen-batch 16 --new-tokens 48 --check-unbatched 16 ;;
  genstatic)
    b h100_generate_static_b128 --task generate --dtype bf16 --gen-images 256 --gen-batch 128 --new-tokens 48 --gen-cache static --profile ;;
  genbase)
    b h100_generate_baseline_b32 --task generate --recipe baseline --dtype bf16 --gen-images 64 --gen-batch 32 --new-tokens 48 ;;
  lossmatch)
    b full_lossmatch_fp16_4bit_b4 --task loss-match --dtype fp16 --load-in-4bit --batch 4
    b full_lossmatch_bf16_b4 --task loss-match --dtype bf16 --batch 4 ;;
  runpath)  # the product's Trainer path beside the bare step, base and gundam
    b h200_run_bf16_base_b32_pad1 --task run --dtype bf16 --batch 32 --steps 12 --warmup 3 --workers 8 --pad-multiple 1
    b h200_run_bf16_base_b32_pad32 --task run --dtype bf16 --batch 32 --steps 12 --warmup 3 --workers 8
    b h200_run_bf16_gundam_b32_pad32 --task run --dtype bf16 --image-mode gundam --batch 32 --steps 8 --warmup 3 --workers 8 ;;
  ddp)  # 2 worker processes sharing one GPU over gloo against 1 process, T4 settings
    timeout ${LIMIT:-300} python3 benchmarks/ddp_check.py --json "$RES/h200_ddp_one_gpu_t4settings.json" 2>&1 | grep -v "Warning\|warn(" ;;
  genmodes)  # where a generation batch's time goes, base and gundam, automatic batch
    b h200_generate_profile_base_b256 --task generate --dtype bf16 --gen-images 256 --gen-batch 256 --new-tokens 48 --profile
    b h200_generate_profile_gundam_b256 --task generate --dtype bf16 --image-mode gundam --gen-images 256 --gen-batch 256 --new-tokens 48 --profile ;;
  t4gen)  # T4 settings (fp16, 4-bit) generation at a batch a 15 GB T4 holds; bf16 gundam, automatic batch
    b h200_t4settings_generate_gundam_b32 --task generate --dtype fp16 --load-in-4bit --image-mode gundam --gen-images 128 --gen-batch 32 --new-tokens 48
    b h200_t4settings_generate_base_b32 --task generate --dtype fp16 --load-in-4bit --gen-images 128 --gen-batch 32 --new-tokens 48
    b h200_generate_gundam_auto --task generate --dtype bf16 --image-mode gundam --gen-images 512 --new-tokens 48 ;;
  recipe)  # DeepSeek's crop mode (dynamic) vs base, LoRA on the routed experts or not
    T4="--dtype fp16 --load-in-4bit --steps 6 --memory-profile"
    b h200_t4_dynamic_b8 $T4 --image-mode dynamic --batch 8
    b h200_t4_dynamic_b8_noexperts $T4 --image-mode dynamic --batch 8 --no-lora-experts
    b h200_t4_dynamic_b16 $T4 --image-mode dynamic --batch 16
    b h200_t4_dynamic_b16_noexperts $T4 --image-mode dynamic --batch 16 --no-lora-experts
    b h200_t4_base_b8 $T4 --image-mode base --batch 8
    b h200_t4_base_b8_noexperts $T4 --image-mode base --batch 8 --no-lora-experts
    b h200_bf16_dynamic_b32 --dtype bf16 --image-mode dynamic --batch 32 --steps 6 ;;
  recipegen)  # genmodes' runs with the presets' repetition guard (n 20, window 90)
    G="--task generate --dtype bf16 --gen-images 256 --gen-batch 256 --new-tokens 48 --no-repeat-ngram 20 --no-repeat-window 90"
    b h200_generate_dynamic_b256_guard $G --image-mode dynamic
    b h200_generate_base_b256_guard $G --image-mode base
    b h200_generate_dynamic_b256_lora --task generate --dtype bf16 --gen-images 256 --gen-batch 256 --new-tokens 48 --image-mode dynamic --gen-lora
    b h200_generate_dynamic_b256_guard_lora $G --image-mode dynamic --gen-lora
    b h200_generate_dynamic_b256_guard_lora_noexperts $G --image-mode dynamic --gen-lora --no-lora-experts ;;
  prefill)  # where a prefill's GPU time goes, by module and by kernel, base and DeepSeek's crop mode
    b h200_generate_prefill_base_b256 --task generate --dtype bf16 --gen-images 256 --gen-batch 256 --new-tokens 48 --profile
    b h200_generate_prefill_dynamic_b256 --task generate --dtype bf16 --image-mode dynamic --gen-images 256 --gen-batch 256 --new-tokens 48 --profile ;;
  genstatic2)  # transformers' static cache + compiled decoding on today's grouped_mm path; 2 passes
    b h200_generate_static_inductor_base_b256 --task generate --dtype bf16 --gen-images 512 --gen-batch 256 --new-tokens 48 --gen-cache static --gen-compile-backend inductor
    b h200_generate_static_cudagraphs_base_b256 --task generate --dtype bf16 --gen-images 512 --gen-batch 256 --new-tokens 48 --gen-cache static --gen-compile-backend cudagraphs ;;
  glm_ocr_memory)
    G="--model glm_ocr --lora-r 8 --lora-alpha 16"
    b glm_ocr_t4settings_train_fp16_b8 $G --dtype fp16 --batch 8 --steps 6 --memory-profile
    b glm_ocr_t4settings_train_fp16_b16 $G --dtype fp16 --batch 16 --steps 6 --memory-profile
    b glm_ocr_t4settings_train_fp16_4bit_b16 $G --dtype fp16 --load-in-4bit --batch 16 --steps 6 --memory-profile ;;
  glm_ocr)  # GLM-OCR's released shapes, random weights: the lines_glm_ocr recipe (LoRA r8/16 on the decoder, no
    # 4-bit) at T4 settings (fp16) and a 4-bit variant, bf16 training, generation at bf16 and at T4 settings
    # (glm_ocr_memory: peak memory, may run beside other work; glm_ocr: speed, the GPU to itself)
    G="--model glm_ocr --lora-r 8 --lora-alpha 16"
    b glm_ocr_train_bf16_b32 $G --dtype bf16 --batch 32 --steps 8
    b glm_ocr_generate_bf16_auto --task generate $G --dtype bf16 --gen-images 512 --new-tokens 48 --check-unbatched 8
    b glm_ocr_t4settings_generate_fp16_b32 --task generate $G --dtype fp16 --gen-images 128 --gen-batch 32 --new-tokens 48
    b glm_ocr_generate_bf16_b256_guard --task generate $G --dtype bf16 --gen-images 512 --gen-batch 256 --new-tokens 48 --no-repeat-ngram 20 --no-repeat-window 90 ;;
  vision)  # ways of running the vision tower: transformers' layers, folded rel-pos, FlexAttention, compiled
    timeout ${LIMIT:-300} python3 benchmarks/vision_variants.py --repeats 3 --json "$RES/h200_vision_variants.json" 2>&1 | grep -v "Warning\|warn(" ;;
  rawpix)  # 8-bit views normalised on the GPU (hwocr/inputs/pixels.py), automatic batch, several batches
    b h200_generate_rawpixels_dynamic_auto --task generate --dtype bf16 --image-mode dynamic --gen-images 512 --new-tokens 48 --profile
    b h200_generate_rawpixels_base_auto --task generate --dtype bf16 --gen-images 1024 --new-tokens 48 --profile ;;
  compiled)  # the product's generation (8-bit views, compiled tower) against the eager tower
    G="--task generate --dtype bf16 --new-tokens 48 --eager-decoding --compare start compiled_tower compiled_tower"
    LIMIT=280 b h200_generate_compiled_vs_eager_dynamic_auto $G --image-mode dynamic --gen-images 512
    LIMIT=170 b h200_generate_compiled_vs_eager_base_auto $G --gen-images 1024
    LIMIT=150 b h200_generate_identity_fp32_compiled --task generate --dtype fp32 --gen-images 16 --gen-batch 16 --new-tokens 48 --check-unbatched 16 --eager-decoding
    LIMIT=120 b h200_generate_identity_fp32_eager --task generate --dtype fp32 --gen-images 16 --gen-batch 16 --new-tokens 48 --check-unbatched 16 --eager-vision --eager-decoding ;;
  compiledlora)  # tuned evaluation's path: a LoRA (experts on) and the presets' guard, eager vs compiled tower
    LIMIT=230 b h200_generate_compiled_vs_eager_dynamic_guard_lora --task generate --dtype bf16 --new-tokens 48 --compare start compiled_tower compiled_tower --image-mode dynamic --gen-images 256 --gen-lora --no-repeat-ngram 20 --no-repeat-window 90 ;;
  graphprobe)  # one batch: a decoding step through generate and replayed as a CUDA graph (evaluate/fast/decoding.py)
    LIMIT=200 b h200_generate_graphed_profile_base_b256 --task generate --dtype bf16 --gen-images 256 --gen-batch 256 --new-tokens 48 --profile ;;
  graphprobe2)  # one batch each, the tower compiled: decoding steps through generate and graphed, with their kernels; fp32 fidelity
    LIMIT=150 b h200_generate_graphed_profile_compiled_base_b256 --task generate --dtype bf16 --gen-images 256 --gen-batch 256 --new-tokens 48 --profile
    LIMIT=200 b h200_generate_graphed_profile_compiled_dynamic_b256 --task generate --dtype bf16 --image-mode dynamic --gen-images 256 --gen-batch 256 --new-tokens 48 --profile
    LIMIT=150 b h200_generate_identity_fp32_graphed --task generate --dtype fp32 --gen-images 16 --gen-batch 16 --new-tokens 48 --compare compiled_tower graphed --check-unbatched 16 ;;
  graphed)  # the 8-bit start, the compiled tower, then graphed decoding too; same images, one process each
    G="--task generate --dtype bf16 --new-tokens 48 --compare start compiled_tower compiled_tower graphed graphed"
    LIMIT=200 b h200_generate_graphed_base_auto $G --gen-images 1024
    LIMIT=330 b h200_generate_graphed_dynamic_auto $G --image-mode dynamic --gen-images 512 ;;
  graphfinal)  # the *_kept_* records: measured at 2ee7361/aadc343, whose step was kept between batches; today's code captures per batch
    G="--task generate --dtype bf16 --new-tokens 48 --compare start compiled_tower graphed graphed"
    LIMIT=170 b h200_generate_graphed_kept_base_auto $G --gen-images 1024
    LIMIT=260 b h200_generate_graphed_kept_dynamic_auto $G --image-mode dynamic --gen-images 1024
    LIMIT=170 b h200_generate_graphed_kept_dynamic_guard_lora $G --image-mode dynamic --gen-images 256 --gen-lora --no-repeat-ngram 20 --no-repeat-window 90 ;;
  gil)  # CPU only: does the processor thread slow a launch-bound main thread? (benchmarks/README.md)
    for i in 1 2 3; do timeout ${LIMIT:-120} python3 benchmarks/gil_contention.py --json "$RES/gpuhost_gil_contention_$i.json" 2>&1 | grep -v "Warning\|warn(" ; done ;;
  gputests)  # the GPU-marked tests (CI has no GPU); named files: the GPU image lacks `datasets`, which others import
    timeout ${LIMIT:-300} python3 -m pytest -q -m gpu -p no:cacheprovider tests/test_decode.py tests/test_optimizations.py 2>&1 | tail -15 ;;
  timeline)  # measured at 9169302 (the batch pinned in the encoding thread; each capture emptied the caches)
    G="--task generate --dtype bf16 --new-tokens 48 --compare graphed graphed --timeline"
    LIMIT=260 b h200_generate_timeline_dynamic $G --image-mode dynamic --gen-images 768
    LIMIT=150 b h200_generate_timeline_base $G --gen-images 1024 ;;
  threads)  # measured at 9786b2d: slices of each batch encoded by threads; their CPU scaling alone first
    timeout ${LIMIT:-200} python3 benchmarks/encoding_threads.py --lines 256 --threads 1 2 4 8 12 --json "$RES/gpuhost_encoding_threads.json" 2>&1 | grep -v "Warning\|warn("
    G="--task generate --dtype bf16 --new-tokens 48 --compare start graphed threads4 threads8 --timeline"
    LIMIT=300 b h200_generate_threads_dynamic_auto $G --image-mode dynamic --gen-images 1024
    LIMIT=170 b h200_generate_threads_base_auto $G --gen-images 1024 ;;
  threadsfinal)  # the product's default, 4 encoding threads (that pass twice: is the first one's first batch slower?)
    G="--task generate --dtype bf16 --new-tokens 48 --timeline --compare start graphed threads4 threads4"
    LIMIT=300 b h200_generate_threads4_dynamic_auto $G threads8 --image-mode dynamic --gen-images 1024
    LIMIT=150 b h200_generate_threads4_base_auto $G --gen-images 1024
    # tuned evaluation's path: a LoRA (experts on) and the presets' guard
    LIMIT=200 b h200_generate_threads4_dynamic_guard_lora $G --image-mode dynamic --gen-images 384 --gen-lora --no-repeat-ngram 20 --no-repeat-window 90 ;;
  final)  # 4 encoding threads (4 encoding threads, SAM's patch embedding as a matmul); measured at 506d2f8
    # first: fresh host memory, before any other process of this machine has used it
    timeout 60 python3 benchmarks/first_touch.py --gib 8 --json "$RES/gpuhost_first_touch.json" 2>&1 | grep -v "Warning\|warn("
    G="--task generate --dtype bf16 --new-tokens 48 --timeline --compare start graphed threads4 threads4"
    LIMIT=290 b h200_generate_final_dynamic_auto $G --image-mode dynamic --gen-images 1024
    LIMIT=140 b h200_generate_final_base_auto $G --gen-images 1024
    timeout 90 python3 benchmarks/sam_convs.py --json "$RES/h200_sam_convs_matmul.json" 2>&1 | grep -v "Warning\|warn(" ;;
  finalfp32)  # batch-1 against batched token ids in fp32 through the final code's compiled tower (16/16 before the matmul)
    LIMIT=150 b h200_generate_final_identity_fp32 --task generate --dtype fp32 --gen-images 16 --gen-batch 16 --new-tokens 48 --check-unbatched 16 ;;
  finallora)  # tuned evaluation's path at the final code: a LoRA (experts on) and the presets' guard
    LIMIT=240 b h200_generate_final_dynamic_guard_lora --task generate --dtype bf16 --new-tokens 48 --timeline --compare start graphed threads4 threads4 --image-mode dynamic --gen-images 384 --gen-lora --no-repeat-ngram 20 --no-repeat-window 90 ;;
  firsttouch)  # fresh host memory: pageable, page-locked by cudaHostAlloc (torch's default) and by registration (the product's: encoding.prefer_registered_page_locking)
    timeout 120 python3 benchmarks/first_touch.py --gib 8 --json "$RES/gpuhost_first_touch.json" 2>&1 | grep -v "Warning\|warn("
    PYTORCH_CUDA_ALLOC_CONF=$REGISTERED timeout 120 python3 benchmarks/first_touch.py --gib 8 --json "$RES/gpuhost_first_touch_register.json" 2>&1 | grep -v "Warning\|warn(" ;;
  evalspeed)  # evaluation's speed within one run: the plain path (float32 views) and the 8-bit start, the product's path twice (the first graphed pass compiles the tower), the 8-bit start again on warm host memory
    G="--task generate --dtype bf16 --new-tokens 48 --timeline --compare plain start graphed threads4 threads4 start"
    LIMIT=480 b h200_generate_eval_passes_dynamic_auto $G --image-mode dynamic --gen-images 1024 ;;
  evalspeedbase)
    LIMIT=200 b h200_generate_eval_passes_base_auto --task generate --dtype bf16 --new-tokens 48 --timeline --compare plain start graphed threads4 threads4 start --gen-images 1024 ;;
  evalspeedlora)  # tuned evaluation's path: a LoRA (experts on) and the presets' guard: applied at every step, then merged (what tuned evaluation runs)
    LIMIT=300 b h200_generate_eval_passes_dynamic_guard_lora --task generate --dtype bf16 --new-tokens 48 --timeline --compare plain start graphed threads4 merged merged --image-mode dynamic --gen-images 512 --gen-lora --no-repeat-ngram 20 --no-repeat-window 90 ;;
  evalspeedfp32)  # batch-1 against batched token ids in fp32, then the GPU-marked tests
    LIMIT=150 b h200_generate_unbatched_identity_fp32 --task generate --dtype fp32 --gen-images 16 --gen-batch 16 --new-tokens 48 --check-unbatched 16
    timeout 300 python3 -m pytest -q -m gpu -p no:cacheprovider tests/test_decode.py tests/test_optimizations.py 2>&1 | tail -15 ;;
  evalspeedvs)  # the product's generation path here against an older checkout ($OLD, e.g. from `git archive`),
    # same machine, same weights (one full checkpoint both load), base and crop mode; the 2nd threads4 pass counts
    G="--task generate --dtype bf16 --new-tokens 48 --compare graphed threads4 threads4"
    DEV=$(nvidia-smi --query-gpu=name --format=csv,noheader | grep -o "H[0-9]00" | head -1 | tr H h)
    ABS=$(cd "$RES" && pwd) OLDNAME=$(basename "${OLD:?set OLD to an older checkout}")
    mkdir -p "$HWOCR_BENCH_DIR" /tmp/hwocr-bench-old && ln -sfn "$HWOCR_BENCH_DIR/full" /tmp/hwocr-bench-old/full
    for mode in "base --gen-images 768" "dynamic --image-mode dynamic --gen-images 512"; do
      set -- $mode
      b "${DEV}_generate_product_$1" $G "${@:2}"
      echo "### ${DEV}_generate_product_$1_$OLDNAME"
      (cd "$OLD" && HWOCR_BENCH_DIR=/tmp/hwocr-bench-old timeout ${LIMIT:-300} python3 benchmarks/bench.py \
        --name "${DEV}_generate_product_$1_$OLDNAME" --json "$ABS/${DEV}_generate_product_$1_$OLDNAME.json" $G "${@:2}" 2>&1 | grep -v "Warning\|warn(")
    done ;;
  samconvs)  # SAM's convolutions with cuDNN's default algorithms and with cudnn.benchmark
    timeout ${LIMIT:-120} python3 benchmarks/sam_convs.py --json "$RES/h200_sam_convs.json" 2>&1 | grep -v "Warning\|warn(" ;;
  *) echo "unknown phase $phase" ;;
esac; done
