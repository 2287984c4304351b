#!/usr/bin/env bash
# Rebuilds the default model (models/scenes-vlm) from nothing, on the CPU:
#   npm run train:default            (STEPS=1200 by default; WORK=dir keeps the intermediate files)
# Writes the initial folder (configs, tokenizer, chat template, seeded random weights), 8000
# training scenes (with their question banks) and 200 validation scenes, trains (tools/train/train.py, fixed seeds), and puts the
# bf16 weights with the folder's other files into models/scenes-vlm.
set -euo pipefail
cd "$(dirname "$0")/../.."
STEPS=${STEPS:-1200}
WORK=${WORK:-$(mktemp -d /tmp/sparsevila-train.XXXXXX)}
if ! /usr/bin/python3 -c 'import torch' 2>/dev/null; then
  echo "the recipe needs Debian's PyTorch: apt-get install python3-torch libopenblas0-pthread libjemalloc2" >&2
  exit 1
fi
npm run build
node -e "import('./dist/src/index.js').then((m) => m.writeTaskModel(process.argv[1]))" "$WORK/init"
[ -f "$WORK/train/episodes.jsonl" ] || node dist/src/cli/main.js scenes --split train --count 8000 --bank --out "$WORK/train"
[ -f "$WORK/val/episodes.jsonl" ] || node dist/src/cli/main.js scenes --split validation --count 200 --out "$WORK/val"
# jemalloc, never returning freed pages: with glibc's malloc a third of a step went to the kernel
# (page faults of the large attention tensors freed and re-allocated every step).
JEMALLOC=/usr/lib/x86_64-linux-gnu/libjemalloc.so.2
[ -f "$JEMALLOC" ] && export LD_PRELOAD=$JEMALLOC MALLOC_CONF=dirty_decay_ms:-1,muzzy_decay_ms:-1
(cd tools/train && /usr/bin/python3 train.py --init "$WORK/init" --data "$WORK/train" --val "$WORK/val" --out "$WORK/trained" --steps "$STEPS" --dtype bf16)
rm -rf models/scenes-vlm
mkdir -p models
cp -r "$WORK/trained" models/scenes-vlm
echo "wrote models/scenes-vlm (work files in $WORK)"
