#!/usr/bin/env bash
# Rebuild models/default/shapes-128.safetensors from scratch, resumably (each stage keeps its state in runs/).
# On this project's 2-core CPU: about 1 h 35 min for stage 1, 53 min for stage 2, 36 min for stage 3, 7 min for
# stage 4, 40 min for stage 5, 13 min for stage 6 (about 4 h in all). Run it again after an interruption: finished stages are skipped,
# an unfinished one resumes.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
RUNS=${RUNS:-runs}
OUT=${1:-models/default/shapes-128.safetensors}
mkdir -p "$RUNS"

# 1. the 64x64 model (VAE, decoder, diffusion with the layout stage), exported at diffusion step 4000
[ -f "$RUNS/shapes-64.safetensors" ] || \
  $PY -m webui.training --out "$RUNS/shapes" --until 4000 --export "$RUNS/shapes-64.safetensors"

# 2. fine-tuned at 128x128 (16x16 latents) from those weights
[ -f "$RUNS/r128.safetensors" ] || \
  $PY -m webui.training --out "$RUNS/r128" --image-size 128 --init-from "$RUNS/shapes-64.safetensors" \
    --decoder-steps 0 --steps 3000 --batch 32 --lr 3e-4 --warmup 50 --layout-from 0 --layout-fraction 0.25 \
    --multires-levels 4 --latent-samples 12288 --export "$RUNS/r128.safetensors"

# 3. the class stage: half of every batch circles and squares (the encoded pictures of stage 2 are reused)
mkdir -p "$RUNS/r128c" "$RUNS/r128d" "$RUNS/r128s" "$RUNS/r128q"
for d in r128c r128d r128s r128q; do
  [ -f "$RUNS/$d/latents.safetensors" ] || cp "$RUNS/r128/latents.safetensors" "$RUNS/$d/"
done
[ -f "$RUNS/r128c.safetensors" ] || \
  $PY -m webui.training --out "$RUNS/r128c" --image-size 128 --init-from "$RUNS/r128.safetensors" \
    --decoder-steps 0 --steps 3000 --batch 32 --lr 3e-4 --warmup 50 --layout-from 0 --layout-fraction 0.25 \
    --class-fraction 0.5 --multires-levels 4 --latent-samples 12288 --export "$RUNS/r128c.safetensors"

# 4. the decoder fine-tuned on whole 128x128 pictures (encoder frozen, so the U-Net's latents stay valid)
[ -f "$RUNS/r128d.safetensors" ] || \
  $PY -m webui.training --out "$RUNS/r128d" --image-size 128 --init-from "$RUNS/r128c.safetensors" \
    --decoder-steps 300 --steps 0 --warmup 20 --latent-samples 12288 --save-every 100 \
    --export "$RUNS/r128d.safetensors"

# 5. small circles and squares: half of every batch, trained where their outline is kept or lost (t = 100-700)
[ -f "$RUNS/r128s.safetensors" ] || \
  $PY -m webui.training --out "$RUNS/r128s" --image-size 128 --init-from "$RUNS/r128d.safetensors" \
    --decoder-steps 0 --steps 3000 --batch 32 --lr 3e-4 --warmup 50 --layout-from 0 --layout-fraction 0.25 \
    --class-fraction 0.5 --class-words "small circle,small square" --class-t 100:700 --multires-levels 4 \
    --latent-samples 12288 --export "$RUNS/r128s.safetensors"

# 6. a short, gentler pass over squares of both sizes and small circles (stage 5 had let large squares slip)
$PY -m webui.training --out "$RUNS/r128q" --image-size 128 --init-from "$RUNS/r128s.safetensors" \
  --decoder-steps 0 --steps 1200 --batch 32 --lr 1e-4 --warmup 50 --layout-from 0 --layout-fraction 0.25 \
  --class-fraction 0.5 --class-words "square,small circle" --class-t 100:700 --multires-levels 4 \
  --latent-samples 12288 --export "$OUT"
echo "Wrote $OUT"
