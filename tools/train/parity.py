"""Checks that the training model (model.py) computes what the engine computes, on one prompt:
python3 tools/train/parity.py MODEL_DIR ENGINE.json   (ENGINE.json from engine-logits.mjs).
Prints the largest absolute logit difference and exits 1 above 1e-3."""
import json
import sys

import torch

from model import load_folder

folder, ref = sys.argv[1], sys.argv[2]
with open(ref) as f:
    r = json.load(f)
model = load_folder(folder).eval()
s = r["size"]
pixels = torch.tensor(r["pixels"], dtype=torch.float32).view(1, 3, s, s)
ids = torch.tensor([r["ids"]])
with torch.no_grad():
    logits = model(pixels, ids)[0]
want = torch.tensor(r["logits"]).view(logits.shape)
diff = (logits - want).abs().max().item()
print(f"max |logit difference| = {diff:.3g} over {logits.numel()} logits (scale {want.abs().max().item():.3g})")
sys.exit(0 if diff <= 1e-3 else 1)
