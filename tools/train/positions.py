"""Does a trained folder find things by the image tokens' positions? Teacher-forced exact match on
a validation split (chat mode, every episode's questions in turn) with a share of each image's
background patches left out (no row attends to them), the kept tokens either at their original
positions or at contiguous ones (as SparseVILA's prefill pruning gives them).

  /usr/bin/python3 tools/train/positions.py MODEL_DIR SPLIT_DIR [--drop 0.75] [--episodes 96]
"""
import argparse
import os
import random

import torch

from train import aux_labels, collate, image_bytes, load_episodes, load_trained, normalise


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("split")
    ap.add_argument("--drop", type=float, default=0.75, help="share of the background patches left out")
    ap.add_argument("--episodes", type=int, default=96)
    args = ap.parse_args()
    model, tok, size, patch, n_image = load_trained(args.model)
    episodes = load_episodes(args.split)[: args.episodes]
    for how in ("all patches", "original positions", "contiguous positions"):
        random.seed(0)
        torch.manual_seed(0)
        right, total = {}, {}
        with torch.no_grad():
            for i in range(0, len(episodes), 16):
                chunk = episodes[i : i + 16]
                items = [(e, e["questions"], True) for e in chunk]
                drops = []
                for e in chunk:
                    bg = (aux_labels(e["objects"], size, patch)[0][5] == 0).nonzero().flatten()
                    drops.append(bg[torch.randperm(len(bg))[: int(len(bg) * args.drop)]] if how != "all patches" else bg[:0])
                ids, mask, pos, blk, spans, hide = collate(tok, n_image, items, tok.vocab["<pad>"], drops)
                if how == "original positions":
                    pos = collate(tok, n_image, items, tok.vocab["<pad>"])[2]
                pixels = normalise(torch.stack([image_bytes(os.path.join(e["dir"], e["image"])) for e in chunk]))
                pred = model(pixels, ids, positions=pos, blocks=blk, hide=hide).argmax(-1)
                ok = (pred[:, :-1] == ids[:, 1:]) | (mask[:, 1:] == 0)
                for r, e in enumerate(chunk):
                    for q, (a, b) in zip(e["questions"], spans[r]):
                        right[q["type"]] = right.get(q["type"], 0) + int(ok[r, a - 1 : b - 1].all())
                        total[q["type"]] = total.get(q["type"], 0) + 1
        n = sum(total.values())
        print(f"{how:21s} {100 * sum(right.values()) / n:5.1f}%  " + "  ".join(f"{k} {100 * right[k] / total[k]:.1f}" for k in sorted(total)), flush=True)


if __name__ == "__main__":
    main()
