#!/usr/bin/env bash
# Binding study (issue 15): the bundle fine-tuned at equal compute (750 steps, batch 32,
# the same data and tasks) three ways, then judged on single- and two-object prompts:
#   base      whole-sentence MiniLM states (today's conditioning)
#   subjects  each subject clause encoded on its own (pipeline text_subjects)
#   refiner   two transformer layers over the text tokens (DiT text_refiner)
#   grounding the subject words' cross-attention pushed onto their objects (issue 30; run it
#             by name: scripts/binding_study.sh grounding)
# Usage: scripts/binding_study.sh [VARIANT ...]   (default: all three; reruns resume)
# A shared latent cache at runs/cache20k/latents.safetensors is linked in if present.
set -euo pipefail
cd "$(dirname "$0")/.."
date=$(date +%F)
for v in "${@:-subjects base refiner}"; do
  for variant in $v; do
    out=runs/two_$variant
    mkdir -p "$out"
    if [ -f runs/cache20k/latents.safetensors ] && [ ! -e "$out/latents.safetensors" ]; then
      ln runs/cache20k/latents.safetensors "$out/latents.safetensors"
    fi
    resume=(); [ -e "$out/checkpoints/latest" ] && resume=(--resume)
    [ -f "$out/model/dit/model.safetensors" ] ||
      .venv/bin/tinysora train dit --config "configs/dit_two_$variant.toml" --out "$out" "${resume[@]}"
    .venv/bin/tinysora eval adherence --model "$out/model" --n 200 --groups single two \
      --json "bench/results/$date-adherence-two-$variant.json"
  done
done
