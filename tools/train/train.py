"""Trains the default model on the synthetic scenes.

  /usr/bin/python3 tools/train/train.py --init INIT_DIR --data TRAIN_DIR --out OUT_DIR [--minutes M] [--steps N]

INIT_DIR: a folder from the engine's `writeTaskModel` (configs, tokenizer, chat template, initial
weights). TRAIN_DIR: from `sparsevila scenes --split train --out TRAIN_DIR` (PNGs + episodes.jsonl).
OUT_DIR gets INIT_DIR's files with the trained weights. Each batch mixes single questions (as an
independent question is asked) and whole episodes as one conversation (as in chat mode); the loss
is on the answer tokens and their </s>. Seeds are fixed; threads = all cores.
"""
import argparse
import json
import os
import random
import re
import shutil
import time

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from model import load_folder, save_weights

MEAN = np.array([0.48145466, 0.4578275, 0.40821073], dtype=np.float32)
STD = np.array([0.26862954, 0.26130258, 0.27577711], dtype=np.float32)
SPECIAL = re.compile(r"(<image>|</s>|<s>)")
WORD = re.compile(r"\w+|[^\w\s]+")


class Tokenizer:
    """The word-level tokenizer of tokenizer.json: specials as they are, other text lower-cased and split into \\w+ or punctuation runs."""

    def __init__(self, folder):
        with open(os.path.join(folder, "tokenizer.json")) as f:
            self.vocab = json.load(f)["model"]["vocab"]

    def encode(self, text):
        ids = []
        for part in SPECIAL.split(text):
            if part in self.vocab and SPECIAL.fullmatch(part):
                ids.append(self.vocab[part])
            else:
                ids.extend(self.vocab[w] if w in self.vocab else self.vocab["<unk>"] for w in WORD.findall(part.lower()))
        return ids


def pixels_of(path):
    a = np.asarray(Image.open(path).convert("RGB"), dtype=np.float32) / 255.0
    return torch.from_numpy(((a - MEAN) / STD).transpose(2, 0, 1).copy())


def sample(tok, n_image, questions, chat):
    """ids and loss mask for one conversation (chat: all questions in turn; else the one question)."""
    ids, mask = [tok.vocab["<s>"]], [0]
    for i, q in enumerate(questions):
        user = tok.encode("USER: " + ("<image>" if i == 0 else "") + " " + q["question"] + " ASSISTANT:")
        user = [t for u in user for t in ([u] * n_image if u == tok.vocab["<image>"] else [u])]
        answer = tok.encode(q["answer"] + "</s>")
        ids += user + answer
        mask += [0] * len(user) + [1] * len(answer)
        if not chat:
            break
    return ids, mask


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--init", required=True)
    ap.add_argument("--data", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--minutes", type=float, default=55)
    ap.add_argument("--steps", type=int, default=100000)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    random.seed(args.seed)
    torch.manual_seed(args.seed)
    torch.set_num_threads(os.cpu_count() or 1)

    model = load_folder(args.init)
    tok = Tokenizer(args.init)
    cfg = model.config
    n_image = (cfg["vision_config"]["image_size"] // cfg["vision_config"]["patch_size"]) ** 2
    with open(os.path.join(args.data, "episodes.jsonl")) as f:
        episodes = [json.loads(line) for line in f if line.strip()]
    images = {}

    def image(e):
        if e["image"] not in images:
            images[e["image"]] = pixels_of(os.path.join(args.data, e["image"]))
        return images[e["image"]]

    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.01)
    start, step = time.time(), 0
    model.train()
    while step < args.steps and time.time() - start < args.minutes * 60:
        batch = []
        for _ in range(args.batch):
            e = random.choice(episodes)
            chat = random.random() < 0.5
            qs = e["questions"] if chat else [random.choice(e["questions"])]
            batch.append((image(e), *sample(tok, n_image, qs, chat)))
        t = max(len(b[1]) for b in batch)
        ids = torch.full((len(batch), t), tok.vocab["<pad>"], dtype=torch.long)
        mask = torch.zeros((len(batch), t))
        for i, (_, x, m) in enumerate(batch):
            ids[i, : len(x)] = torch.tensor(x)
            mask[i, : len(m)] = torch.tensor(m, dtype=torch.float32)
        pixels = torch.stack([b[0] for b in batch])
        # Warm-up, then cosine decay over the time budget.
        frac = min(1.0, (time.time() - start) / (args.minutes * 60))
        lr = args.lr * min(1.0, (step + 1) / 50) * 0.5 * (1 + np.cos(np.pi * frac))
        for g in opt.param_groups:
            g["lr"] = lr
        logits = model(pixels, ids)
        loss = (F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1), reduction="none") * mask[:, 1:].reshape(-1)).sum() / mask[:, 1:].sum()
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        step += 1
        if step % 10 == 0:
            print(f"step {step}  loss {loss.item():.4f}  lr {lr:.2e}  {time.time() - start:.0f} s", flush=True)
    os.makedirs(args.out, exist_ok=True)
    for f in os.listdir(args.init):
        if f != "model.safetensors":
            shutil.copy(os.path.join(args.init, f), os.path.join(args.out, f))
    save_weights(model, args.out)
    print(f"wrote {args.out} after {step} steps, {time.time() - start:.0f} s")


if __name__ == "__main__":
    main()
