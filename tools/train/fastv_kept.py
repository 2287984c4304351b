"""Which image tokens FastV and PyramidDrop keep, as the engine chooses them (by the attention the
last prompt row pays them: FastV K = 1 ranks by layer 0, PyramidDrop keeps lambda of the tokens
left after the layers pyramidDropStages names, 0, 1 and 2 of 4), for the first question of a scene: the share of the object patches kept, of the patches of
the objects the question is about, and how much two different first questions' kept sets overlap.

  /usr/bin/python3 tools/train/fastv_kept.py MODEL_DIR SPLIT_DIR [--keep 64] [--lam 0.45] [--scenes 60]
"""
import argparse
import os

import torch

from train import aux_labels, collate, image_bytes, load_episodes, load_trained, normalise, targets


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("split")
    ap.add_argument("--keep", type=int, default=64, help="FastV: image tokens kept after layer 0")
    ap.add_argument("--lam", type=float, default=0.45, help="PyramidDrop: share kept at each stage (the engine's tokens after the last stage: round(lam * n) each time)")
    ap.add_argument("--scenes", type=int, default=60)
    args = ap.parse_args()
    model, tok, size, patch, n_image = load_trained(args.model)
    layers = model.language_model.model.layers
    for l in layers:
        l.keep_probs = True
    L = len(layers)
    stages = sorted({max(1, round(i * L / 4)) - 1 for i in (1, 2, 3)} - {L - 1})  # as pyramidDropStages: after these layers
    stats = {"fastv": [0, 0, 0, 0, 0, 0], "pdrop": [0, 0, 0, 0, 0, 0]}  # objects kept/all, asked kept/all, overlap sum, pairs
    with torch.no_grad():
        for e in load_episodes(args.split)[: args.scenes]:
            labels = aux_labels(e["objects"], size, patch)[0]
            objects = set((labels[5] > 0).nonzero().flatten().tolist())
            pixels = normalise(image_bytes(os.path.join(e["dir"], e["image"]))[None])
            kept_sets = {"fastv": [], "pdrop": []}
            for q in e["questions"][:2]:
                ids, _, pos, blk, spans, _ = collate(tok, n_image, [(e, [q], True)], tok.vocab["<pad>"])
                a = spans[0][0][0]
                model(pixels, ids[:, :a], positions=pos[:, :a], blocks=blk[:, :a])
                img = (ids[0, :a] == model.config["image_token_index"]).nonzero().flatten()
                score = lambda l, among: layers[l].probs[0, :, a - 1, img[among]].mean(0)
                fastv = torch.topk(score(0, torch.arange(n_image)), args.keep).indices
                present = torch.arange(n_image)
                for l in stages:  # PyramidDrop ranks, in each stage's layer, the tokens still present (in the full forward: the same attention up to renormalisation)
                    present = present[torch.topk(score(l, present), max(1, round(len(present) * args.lam))).indices]
                asked = {p for p, o in enumerate(labels[5].tolist()) if o in set(targets(q["question"], e["objects"]))}
                for name, kept in (("fastv", fastv), ("pdrop", present)):
                    k = set(kept.tolist())
                    st = stats[name]
                    st[0] += len(k & objects); st[1] += len(objects); st[2] += len(k & asked); st[3] += len(asked)
                    kept_sets[name].append(k)
            for name, sets in kept_sets.items():
                if len(sets) == 2:
                    stats[name][4] += len(sets[0] & sets[1]) / len(sets[0])
                    stats[name][5] += 1
    for name, st in stats.items():
        print(f"{name}: object patches kept {100 * st[0] / st[1]:.1f}%, patches of the objects the first question is about kept {100 * st[2] / max(1, st[3]):.1f}%, "
              f"two first questions' kept sets overlap {100 * st[4] / max(1, st[5]):.1f}%")


if __name__ == "__main__":
    main()
