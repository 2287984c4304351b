"""What the vision tower of a trained folder knows per patch: linear probes on its feature-layer
states (the ones the projector reads) for each auxiliary label, on a split written by
`sparsevila scenes` (3/4 of the patches to fit, 1/4 to score).

  /usr/bin/python3 tools/train/probe.py MODEL_DIR SPLIT_DIR [--images N]
"""
import argparse
import os

import torch
import torch.nn.functional as F

from model import load_folder
from train import IGNORE, aux_labels, image_bytes, load_episodes, normalise


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("split")
    ap.add_argument("--images", type=int, default=120)
    args = ap.parse_args()
    torch.manual_seed(0)
    model = load_folder(args.model)
    model.eval()
    vc = model.config["vision_config"]
    episodes = load_episodes(args.split)[: args.images]
    feats, labels = [], []
    with torch.no_grad():
        for i in range(0, len(episodes), 20):
            chunk = episodes[i : i + 20]
            h = model.vision_hidden(normalise(torch.stack([image_bytes(os.path.join(e["dir"], e["image"])) for e in chunk])))[:, 1:]
            for b, e in enumerate(chunk):
                feats.append(h[b])
                labels.append(aux_labels(e["objects"], vc["image_size"], vc["patch_size"])[0][:5].T)
    x, y_all = torch.cat(feats), torch.cat(labels)
    n = x.shape[0] * 3 // 4
    x = (x - x[:n].mean(0)) / (x[:n].std(0) + 1e-6)
    for j, name in enumerate(["colour", "shape", "glyph", "region", "centre"]):
        y = y_all[:, j]
        keep = y != IGNORE
        if name in ("shape", "glyph"):  # on object patches only
            keep &= y_all[:, 1] > 0
        fit, score = keep.clone(), keep.clone()
        fit[n:] = False
        score[:n] = False
        probe = torch.nn.Linear(x.shape[1], int(y[keep].max()) + 1)
        opt = torch.optim.Adam(probe.parameters(), lr=1e-2)
        for _ in range(300):
            loss = F.cross_entropy(probe(x[fit]), y[fit])
            opt.zero_grad()
            loss.backward()
            opt.step()
        acc = (probe(x[score]).argmax(-1) == y[score]).float().mean().item()
        majority = (torch.bincount(y[score]).max() / score.sum()).item()
        print(f"{name:7s} probe {acc:.3f}  majority class {majority:.3f}  ({int(score.sum())} patches)")


if __name__ == "__main__":
    main()
