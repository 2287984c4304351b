"""Trains the default model on the synthetic scenes.

  /usr/bin/python3 tools/train/train.py --init INIT_DIR --data TRAIN_DIR --out OUT_DIR [--val VAL_DIR] [--steps N] [--dtype bf16|f32]

INIT_DIR: a folder from the engine's `writeTaskModel` (configs, tokenizer, chat template, initial
weights). TRAIN_DIR: from `sparsevila scenes --split train --out TRAIN_DIR` (PNGs + episodes.jsonl).
OUT_DIR gets INIT_DIR's files with the trained weights. Each batch mixes single questions (as an
independent question is asked) and whole episodes as one conversation (as in chat mode); the loss
is on the answer tokens and their </s>.

Auxiliary losses teach the vision tower what a pretrained CLIP would bring (a tower trained from
scratch by the answer loss alone does not learn to ground in an hour: the loss sits at the answer
priors). Small linear heads, used in training only and not saved, read the tower's feature-layer
states: every patch predicts the colour, shape and glyph of the object covering it, its 3 x 3
region and whether it holds an object's centre; the CLS state predicts which (colour, shape) pairs
and glyphs the scene holds, which also trains the CLS query that SparseVILA's prefill salience reads.
Seeds are fixed; threads = all cores.
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
from PIL import Image, ImageDraw
from torch import nn

from model import load_folder, save_weights

SHAPES = ["circle", "square", "triangle", "diamond"]
COLOURS = ["red", "green", "blue", "yellow", "purple", "orange", "white"]
GLYPHS = ["A", "E", "H", "K", "T", "X", "2", "3", "5", "7"]
IGNORE = -100

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


def load_trained(folder):
    """A trained folder, for measuring it: the model in eval mode, its tokenizer, the image size,
    the patch size and the image tokens per image."""
    model = load_folder(folder)
    model.eval()
    vc = model.config["vision_config"]
    return model, Tokenizer(folder), vc["image_size"], vc["patch_size"], (vc["image_size"] // vc["patch_size"]) ** 2


def image_bytes(path):
    return torch.from_numpy(np.asarray(Image.open(path).convert("RGB"), dtype=np.uint8).transpose(2, 0, 1).copy())


def normalise(images):
    """uint8 [B, 3, S, S] -> the CLIP-normalised pixels the engine's preprocessor produces."""
    a = images.float() / 255.0
    return (a - torch.from_numpy(MEAN)[:, None, None]) / torch.from_numpy(STD)[:, None, None]


def outline(draw, o, fill):
    """Draws object o's shape as src/data/scenes.ts renders it."""
    x, y, r = o["x"], o["y"], o["r"]
    if o["shape"] == "circle":
        draw.ellipse([x - r, y - r, x + r, y + r], fill=fill)
    elif o["shape"] == "square":
        draw.rectangle([x - 0.85 * r, y - 0.85 * r, x + 0.85 * r, y + 0.85 * r], fill=fill)
    elif o["shape"] == "triangle":
        draw.polygon([(x, y - r), (x + 0.95 * r, y + 0.75 * r), (x - 0.95 * r, y + 0.75 * r)], fill=fill)
    else:
        draw.polygon([(x, y - r), (x + r, y), (x, y + r), (x - r, y)], fill=fill)


def aux_labels(objects, size, patch):
    """Per-patch labels [8, n] and the scene's multi-hot [38] (28 colour-shape pairs, then 10
    glyphs). Rows: colour, shape and glyph of the object covering the patch (0: none; IGNORE where
    a patch is only partly covered), the patch's 3 x 3 region, whether it holds an object's centre,
    the object covering it (1-based, 0 for none), and that object's centre column and row on the
    patch grid (IGNORE off objects). Every patch of an object carries its colour, shape and centre;
    the glyph is labelled on the object's centre patch only, the one it is drawn in (labelled on
    every patch of the object, the tower did not learn it: a linear probe read it worse than the
    majority class after 600 steps), and glyph questions look there (attention_loss)."""
    g = size // patch
    body = Image.new("L", (size, size), 0)
    db = ImageDraw.Draw(body)
    centre = np.zeros(g * g, dtype=np.int64)
    scene = np.zeros(len(SHAPES) * len(COLOURS) + len(GLYPHS), dtype=np.float32)
    for i, o in enumerate(objects, 1):
        outline(db, o, i)
        scene[COLOURS.index(o["colour"]) * len(SHAPES) + SHAPES.index(o["shape"])] = 1
        if o["glyph"]:
            scene[len(SHAPES) * len(COLOURS) + GLYPHS.index(o["glyph"])] = 1
        centre[min(g - 1, int(o["y"] // patch)) * g + min(g - 1, int(o["x"] // patch))] = 1
    b = np.asarray(body).reshape(g, patch, g, patch).transpose(0, 2, 1, 3).reshape(g * g, patch * patch)
    labels = np.full((8, g * g), IGNORE, dtype=np.int64)
    labels[5] = 0
    for p in range(g * g):
        ids, counts = np.unique(b[p], return_counts=True)
        cover = {int(i): c / b.shape[1] for i, c in zip(ids, counts) if i}
        if not cover:
            labels[0, p] = labels[1, p] = labels[2, p] = 0
        else:
            i = max(cover, key=cover.get)
            if cover[i] >= 0.3:
                o = objects[i - 1]
                labels[5, p] = i
                labels[0, p] = 1 + COLOURS.index(o["colour"])
                labels[1, p] = 1 + SHAPES.index(o["shape"])
                if centre[p]:
                    labels[2, p] = 1 + GLYPHS.index(o["glyph"]) if o["glyph"] else 0
                labels[6, p] = min(g - 1, int(o["x"] // patch))
                labels[7, p] = min(g - 1, int(o["y"] // patch))
        cy, cx = (p // g + 0.5) * patch, (p % g + 0.5) * patch
        labels[3, p] = min(2, int(cy * 3 // size)) * 3 + min(2, int(cx * 3 // size))
    labels[4] = centre
    return torch.from_numpy(labels), torch.from_numpy(scene)


REGIONS = ["top left", "top middle", "top right", "middle left", "centre", "middle right", "bottom left", "bottom middle", "bottom right"]


def object_name(o):
    """How the questions name an object: "red triangle"."""
    return f"{o['colour']} {o['shape']}"


RELATION = re.compile(r"Which is further \w+, the (\w+ \w+) or the (\w+ \w+)\?$")


def relation_names(question):
    """The two objects a relation question names ("red triangle", ...), in its order; None for
    another template."""
    m = RELATION.match(question)
    return m.groups() if m else None


def targets(question, objects):
    """The objects (1-based) a question is about, from its template in src/data/scenes.ts."""
    ids = lambda pred: [i for i, o in enumerate(objects, 1) if pred(o)]
    m = re.match(r"What colour is the \w+ in the (.+)\?$", question) or re.match(r"What shape is in the (.+)\?$", question)
    if m:
        return ids(lambda o: REGIONS[o["region"]] == m.group(1))
    m = re.match(r"(?:Which letter or digit is on the|Is there an?) (\w+ \w+)\?$", question)
    if m:
        return ids(lambda o: object_name(o) == m.group(1))
    m = re.match(r"How many (\w+)s are there\?$", question)
    if m:
        return ids(lambda o: o["shape"] == m.group(1))
    m = re.match(r"How many (\w+) objects are there\?$", question)
    if m:
        return ids(lambda o: o["colour"] == m.group(1))
    pair = relation_names(question)
    if pair:
        return ids(lambda o: object_name(o) in pair)
    raise ValueError(f"no template matches the question {question!r}")


QUESTION_TYPES = ["colour", "shape", "glyph", "exists", "count", "relation"]
NAME = re.compile(r"\b(" + "|".join(COLOURS) + r") (" + "|".join(SHAPES) + r")\b")


def question_labels(q):
    """What a question asks about, as class indices: its type, the region it names (9: none), the
    colour and shape of the first and second object it names or counts (7 / 4: none), and the
    direction a relation asks about (left, up, none)."""
    text = q["question"]
    region = next((i for i, r in enumerate(REGIONS) if text.endswith(f"the {r}?")), 9)
    names = NAME.findall(text)
    c = [COLOURS.index(n[0]) for n in names] + [7, 7]
    sh = [SHAPES.index(n[1]) for n in names] + [4, 4]
    m = re.match(r"What colour is the (\w+) in", text) or re.match(r"How many (\w+)s are", text)
    if m:
        sh[0] = SHAPES.index(m.group(1))
    m = re.match(r"How many (\w+) objects", text)
    if m:
        c[0] = COLOURS.index(m.group(1))
    direction = 0 if "further left" in text else 1 if "further up" in text else 2
    return [QUESTION_TYPES.index(q["type"]), region, c[0], sh[0], c[1], sh[1], direction]


class QuestionHeads(nn.Module):
    """Training-only heads on the answer row's state halfway up the language model: they make the
    lower layers gather what the question asks about into that row (without them it did not: the
    region a question names was not decodable there after 200 steps)."""

    SIZES = (len(QUESTION_TYPES), 10, 8, 5, 8, 5, 3)

    def __init__(self, d):
        super().__init__()
        self.norm = nn.LayerNorm(d)
        self.heads = nn.ModuleList(nn.Linear(d, n) for n in self.SIZES)

    def loss(self, hidden, spans, items):
        rows, labels = [], []
        for b, (_, qs, _) in enumerate(items):
            for q, (a, _) in zip(qs, spans[b]):
                rows.append(hidden[b, a - 1])
                labels.append(question_labels(q))
        h = self.norm(torch.stack(rows))
        y = torch.tensor(labels)
        return sum(F.cross_entropy(head(h), y[:, j]) for j, head in enumerate(self.heads))


class RelationHead(nn.Module):
    """Training-only: for a relation question, whether the answer is the first object named, read
    from the answer row at the input of the layer after the first supervised one (where the two
    objects' positions have been read, one by each half of the heads): it makes that layer compare
    them, so that the next can look at the winner."""

    def __init__(self, d):
        super().__init__()
        self.norm = nn.LayerNorm(d)
        self.head = nn.Linear(d, 2)

    def loss(self, hidden, spans, items):
        rows, labels = [], []
        for b, (_, qs, _) in enumerate(items):
            for q, (a, _) in zip(qs, spans[b]):
                if q["type"] == "relation":
                    rows.append(hidden[b, a - 1])
                    labels.append(int(q["answer"] != relation_names(q["question"])[0]))
        if not rows:
            return torch.zeros(())
        return F.cross_entropy(self.head(self.norm(torch.stack(rows).float())), torch.tensor(labels))


def attention_loss(model, ids, spans, items, objmaps, centres, image_id, layers):
    """-log of the attention mass (mean over heads, over `layers`) that the row predicting each
    answer's first token puts on the patches of the objects its question is about (for a glyph
    question, on the object's centre patch, where the glyph is drawn). A count question is
    supervised to a uniform spread over the counted objects' centre patches and the <s> token:
    n objects then take n/(n+1) of the mass and the count is in how much of <s>'s value is read
    (spread over the objects alone, as the other types are, the read-out of one triangle and of
    three is the same vector, and count stayed at 65-73%)."""
    terms = []
    for b, (e, qs, _) in enumerate(items):
        img = (ids[b] == image_id).nonzero().flatten()
        objmap, centre = objmaps[b].tolist(), centres[b].tolist()
        for q, (a, _) in zip(qs, spans[b]):
            about = set(targets(q["question"], e["objects"]))
            if q["type"] == "count":
                cols = torch.cat([torch.zeros(1, dtype=torch.long), img[[p for p, o in enumerate(objmap) if o in about and centre[p]]]])
                for l in layers:
                    probs = model.language_model.model.layers[l].probs[b, :, a - 1].mean(0)
                    terms.append(-torch.log(probs[cols] + 1e-6).mean())
                continue
            if q["type"] == "relation":
                # In the first supervised layer, one half of the heads on each of the two objects,
                # in the order named (averaged over one spread, their centre columns or rows arrive
                # summed and the read-out cannot tell which object is where); in the later ones,
                # every head on the answer, and so for the row that predicts its second token (the
                # shape). With both objects spread over every head in every layer, relation stayed
                # at 65-75%, its first token wrong in three cases of four.
                names = relation_names(q["question"])
                named = [{i for i, o in enumerate(e["objects"], 1) if object_name(o) == n} for n in names]
                cols = [img[[p for p, o in enumerate(objmap) if o in ids]] for ids in named]
                if all(len(c) for c in cols):
                    win = cols[0] if q["answer"] == names[0] else cols[1]
                    for i, l in enumerate(layers):
                        probs = model.language_model.model.layers[l].probs[b]
                        if i == 0:
                            half = probs.shape[0] // 2
                            terms.append(-torch.log(probs[:half, a - 1, cols[0]].sum(-1).mean() + 1e-6))
                            terms.append(-torch.log(probs[half:, a - 1, cols[1]].sum(-1).mean() + 1e-6))
                        else:
                            terms.append(-torch.log(probs[:, a - 1, win].sum(-1).mean() + 1e-6))
                        terms.append(-torch.log(probs[:, a, win].sum(-1).mean() + 1e-6))
                continue
            want = [p for p, o in enumerate(objmap) if o in about and (centre[p] or q["type"] != "glyph")]
            if not want:
                continue
            cols = img[want]
            for l in layers:
                mass = model.language_model.model.layers[l].probs[b, :, a - 1, cols].sum(-1).mean()
                terms.append(-torch.log(mass + 1e-6))
    return torch.stack(terms).mean() if terms else torch.zeros(())


def cls_attention_loss(layer, objmaps):
    """Cross-entropy between a uniform spread over the object patches and the class token's
    head-mean attention in `layer` (the tower layer SparseVILA's prefill salience reads): a
    pretrained CLIP's class token looks at the salient objects, and SparseVILA keeps the patches it
    looks at. Without it, the class token learnt to summarise the scene from a few patches: at 64
    of 256 tokens kept, 22% of the object patches were dropped (run 9)."""
    probs = layer.cls_probs.mean(1)[:, 1:]  # [B, patches]
    on = (objmaps > 0).float()
    return (-(torch.log(probs + 1e-9) * on).sum(1) / on.sum(1).clamp(min=1)).mean()


class AuxHeads(nn.Module):
    """Training-only heads on the tower's feature-layer states (not saved with the model)."""

    def __init__(self, d, grid):
        super().__init__()
        self.norm = nn.LayerNorm(d)
        self.patch = nn.ModuleList(nn.Linear(d, n) for n in (1 + len(COLOURS), 1 + len(SHAPES), 1 + len(GLYPHS), 9, 2, grid, grid))
        self.scene = nn.Linear(d, len(SHAPES) * len(COLOURS) + len(GLYPHS))

    def loss(self, hidden, labels, scene):
        h = self.norm(hidden)
        # Shape and glyph are scored on object patches only (the glyph on each object's centre
        # patch, see aux_labels): averaged over every patch, the background (~80% of them, all
        # "none") hid them, and after 450 steps a linear probe read shape and glyph from the
        # tower's states no better than the majority class.
        shape = labels[:, 1].masked_fill(labels[:, 1] == 0, IGNORE)
        glyph = labels[:, 2].masked_fill(labels[:, 1] <= 0, IGNORE)
        targets = [labels[:, 0], shape, glyph, labels[:, 3], labels[:, 4], labels[:, 6], labels[:, 7]]
        total = sum(F.cross_entropy(head(h[:, 1:]).reshape(-1, head.out_features), y.reshape(-1), ignore_index=IGNORE) for head, y in zip(self.patch, targets))
        return total + F.binary_cross_entropy_with_logits(self.scene(h[:, 0]), scene)


class GlyphHead(nn.Module):
    """Training-only: the glyph (or none) of each object's centre patch, read from the projector's
    output, by unit-norm class directions (so the loss falls only as the glyph takes a large share
    of the features, not as the head's weights grow). Without it the tower knew the glyph (43% of
    the variance of its features on those patches, linear probe 0.99) but the projector, trained
    only by the answers, let it fall to 9% while colour took 31%, and the glyph answers stayed at
    chance (run 10: 12%) although 94% of the answer row's attention was on the glyph's patch."""

    def __init__(self, d):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(1 + len(GLYPHS), d) * 0.02)

    def loss(self, feats, labels):
        on = (labels[:, 4] == 1) & (labels[:, 1] > 0)  # centre patches of objects
        logits = feats[on].float() @ F.normalize(self.weight, dim=1).T
        return F.cross_entropy(logits, labels[:, 2][on], label_smoothing=0.1)  # smoothing: the features stop growing once the glyph is read


def sample(tok, n_image, questions, chat):
    """ids, loss mask, positions, blocks and the answers' [start, end) for one image and its questions. chat: one conversation,
    the questions in turn (as chat mode asks them). Else independent questions packed after the
    image: each in its own block, at the positions it has when asked alone (independent mode)."""
    image = tok.vocab["<image>"]
    prefix = [tok.vocab["<s>"]] + [t for u in tok.encode("USER: <image>") for t in ([u] * n_image if u == image else [u])]
    ids, mask, pos, blk = list(prefix), [0] * len(prefix), list(range(len(prefix))), [0] * len(prefix)
    spans = []
    for i, q in enumerate(questions):
        user = tok.encode((" USER: " if chat and i > 0 else " ") + q["question"] + " ASSISTANT:")
        answer = tok.encode(q["answer"] + "</s>")
        start = len(ids) if chat else len(prefix)
        spans.append((len(ids) + len(user), len(ids) + len(user) + len(answer)))
        ids += user + answer
        mask += [0] * len(user) + [1] * len(answer)
        pos += list(range(start, start + len(user) + len(answer)))
        blk += [0 if chat else i + 1] * (len(user) + len(answer))
    return ids, mask, pos, blk, spans


def pick_questions(e, k, rng):
    """k questions of a scene's bank (or its episode), types in turn at random, "is there" half yes
    and half no, no question twice."""
    pool = list(e.get("bank") or e["questions"])
    rng.shuffle(pool)
    by_type = {}
    for q in pool:
        key = (q["type"], q["answer"] == "yes") if q["type"] == "exists" else (q["type"], None)
        by_type.setdefault(key, []).append(q)
    out = []
    while len(out) < k and by_type:
        t = rng.choice(sorted({kt for kt, _ in by_type}))
        keys = [key for key in by_type if key[0] == t]
        key = rng.choice(keys)
        out.append(by_type[key].pop())
        if not by_type[key]:
            del by_type[key]
    return out


def load_episodes(folder):
    with open(os.path.join(folder, "episodes.jsonl")) as f:
        episodes = [json.loads(line) for line in f if line.strip()]
    for e in episodes:
        if "objects" not in e:
            raise ValueError(f"{folder}/episodes.jsonl: episode {e.get('seed')} has no 'objects' (write the split with this version of `sparsevila scenes`)")
        e["dir"] = folder
    return episodes


def collate(tok, n_image, items, pad, drops=None):
    """items: (episode, questions, chat) -> ids, loss mask, positions, blocks, each [B, T], per
    row the answers' [start, end) in question order, and hide [B, T]. drops: per row, the image
    patches (0..n_image-1) to leave out as SparseVILA's prefill pruning does: no row attends to
    them and the tokens after them move up, so the kept image tokens have contiguous positions."""
    rows = [sample(tok, n_image, qs, chat) for _, qs, chat in items]
    t = max(len(r[0]) for r in rows)
    ids = torch.full((len(rows), t), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), t))
    pos = torch.zeros((len(rows), t), dtype=torch.long)
    blk = torch.zeros((len(rows), t), dtype=torch.long)  # padding: block 0, after everything
    hide = torch.zeros((len(rows), t), dtype=torch.bool)
    for i, (x, m, p, b, _) in enumerate(rows):
        ids[i, : len(x)] = torch.tensor(x)
        mask[i, : len(m)] = torch.tensor(m, dtype=torch.float32)
        pos[i, : len(p)] = torch.tensor(p)
        pos[i, len(p):] = max(p) + 1
        blk[i, : len(b)] = torch.tensor(b)
        if drops is not None and len(drops[i]):
            img = (ids[i] == tok.vocab["<image>"]).nonzero().flatten()
            hide[i, img[drops[i]]] = True
            pos[i] -= torch.cumsum(hide[i].long(), 0) - hide[i].long()  # minus the dropped tokens before each
    return ids, mask, pos, blk, [r[4] for r in rows], hide


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--init", required=True)
    ap.add_argument("--data", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--val", help="a validation split: answer accuracy (teacher-forced) per type is printed as training goes")
    ap.add_argument("--steps", type=int, default=1200, help="optimizer steps (the learning-rate schedule spans them)")
    ap.add_argument("--minutes", type=float, default=0, help="stop early after this many minutes (0: no limit)")
    ap.add_argument("--val-every", type=int, default=150)
    ap.add_argument("--dtype", choices=["f32", "bf16"], default="bf16", help="dtype of the saved weights")
    ap.add_argument("--decay", type=float, default=0.3, help="share of the steps, at the end, over which the learning rate decays (cosine) to 0")
    ap.add_argument("--bf16-matmul", type=int, default=1, help="1: train with bf16 matrix products (torch.autocast), 0: all f32")
    ap.add_argument("--prune-aug", type=float, default=0.5, help="share of the samples whose image loses a random 0-90%% of its background patches (contiguous positions after)")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--lr", type=float, default=1.5e-3)
    ap.add_argument("--chat", type=float, default=0.35, help="share of samples that are conversations (3-6 questions in turn); the others pack --pack independent questions after the image")
    ap.add_argument("--pack", type=int, default=12, help="independent questions per packed sample")
    ap.add_argument("--aux", type=float, default=1.0, help="weight of the auxiliary tower losses")
    ap.add_argument("--attn", type=float, default=0.5, help="weight of the attention supervision (answer rows onto the asked-about objects)")
    ap.add_argument("--cls-attn", type=float, default=0.5, help="weight of the class token's attention supervision (spread over the object patches)")
    ap.add_argument("--save-every", type=float, default=10, help="minutes between checkpoints written to --out")
    ap.add_argument("--tower-steps", type=int, default=150, help="steps (32 images each) training the tower alone on its auxiliary heads before the joint steps")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    random.seed(args.seed)
    torch.manual_seed(args.seed)
    torch.set_num_threads(os.cpu_count() or 1)

    model = load_folder(args.init)
    tok = Tokenizer(args.init)
    cfg = model.config
    vc = cfg["vision_config"]
    size, patch = vc["image_size"], vc["patch_size"]
    n_image = (size // patch) ** 2
    pad = tok.vocab["<pad>"]
    episodes = load_episodes(args.data)
    val = load_episodes(args.val)[:200] if args.val else []
    cache = {}

    def data(e):
        key = (e["dir"], e["image"])
        if key not in cache:
            cache[key] = (image_bytes(os.path.join(e["dir"], e["image"])), *aux_labels(e["objects"], size, patch))
        return cache[key]

    heads = AuxHeads(vc["hidden_size"], size // patch)
    vm = model.vision_tower.vision_model
    fl = cfg["vision_feature_layer"]
    salience_layer = vm.encoder.layers[(len(vm.encoder.layers) + fl if fl < 0 else fl - 1)]  # the last layer vision_hidden runs
    salience_layer.keep_cls = True

    def tower_losses(hidden, got):
        """The per-patch labels of the images `got` (from data()), the aux heads' loss and the class token's attention loss."""
        labels = torch.stack([g[1] for g in got])
        return labels, heads.loss(hidden, labels, torch.stack([g[2] for g in got])), cls_attention_loss(salience_layer, labels[:, 5])
    # Attention supervision in the upper half of the layers: the lower half stays free to gather
    # the question into the answer row (supervising every layer but the first left one layer for
    # that, and the answer row then looked at every object alike: 25-40% of its attention on the
    # right one after 350 steps).
    n_layers = len(model.language_model.model.layers)
    attn_layers = list(range(n_layers // 2, n_layers))
    for l in attn_layers:
        model.language_model.model.layers[l].keep_probs = True
    qheads = QuestionHeads(cfg["text_config"]["hidden_size"])
    gheads = GlyphHead(cfg["text_config"]["hidden_size"])
    rheads = RelationHead(cfg["text_config"]["hidden_size"])
    opt = torch.optim.AdamW([p for m in (model, heads, qheads, gheads, rheads) for p in m.parameters()], lr=args.lr, weight_decay=0.01)
    mid = {}
    model.multi_modal_projector.linear_2.register_forward_hook(lambda mod, inp, out: mid.__setitem__("proj", out))
    model.language_model.model.layers[n_layers // 2].register_forward_hook(lambda mod, inp, out: mid.__setitem__("x", inp[0]))
    if n_layers // 2 + 1 < n_layers:
        model.language_model.model.layers[n_layers // 2 + 1].register_forward_hook(lambda mod, inp, out: mid.__setitem__("after", inp[0]))


    def save():
        os.makedirs(args.out, exist_ok=True)
        for f in os.listdir(args.init):
            if f not in ("model.safetensors", "config.json"):
                shutil.copy(os.path.join(args.init, f), os.path.join(args.out, f))
        with open(os.path.join(args.out, "config.json"), "w") as f:
            json.dump({**cfg, "dtype": "bfloat16" if args.dtype == "bf16" else "float32"}, f, indent=2)
            f.write("\n")
        save_weights(model, args.out, args.dtype)

    def validate():
        """Exact match of the answers (all answer tokens right, teacher-forced) per question type."""
        model.eval()
        right, total = {}, {}
        with torch.no_grad():
            for i in range(0, len(val), 16):
                chunk = val[i : i + 16]
                ids, mask, pos, blk, spans, _ = collate(tok, n_image, [(e, e["questions"], True) for e in chunk], pad)
                pred = model(normalise(torch.stack([data(e)[0] for e in chunk])), ids, positions=pos, blocks=blk).argmax(-1)
                ok = (pred[:, :-1] == ids[:, 1:]) | (mask[:, 1:] == 0)
                for r, e in enumerate(chunk):
                    for q, (a, b) in zip(e["questions"], spans[r]):
                        right[q["type"]] = right.get(q["type"], 0) + int(ok[r, a - 1 : b - 1].all())
                        total[q["type"]] = total.get(q["type"], 0) + 1
        model.train()
        n = sum(total.values())
        return f"val {sum(right.values()) / n:.3f} " + " ".join(f"{k} {right[k] / total[k]:.2f}" for k in sorted(total))

    # bf16 matrix products (the weights and the optimizer stay f32): on this CPU (AVX512-BF16)
    # they run at twice the f32 rate.
    autocast = lambda: torch.autocast("cpu", dtype=torch.bfloat16, enabled=bool(args.bf16_matmul))
    start, step, last_save = time.time(), 0, time.time()
    model.train()
    # The tower first learns alone from its auxiliary heads (a step costs a quarter of a full one
    # per image): the language model then starts on features that already tell objects apart.
    tower = [p for n, p in model.named_parameters() if n.startswith("vision_tower.")] + list(heads.parameters())
    for t in range(args.tower_steps):
        got = [data(random.choice(episodes)) for _ in range(32)]
        for g in opt.param_groups:
            g["lr"] = args.lr * min(1.0, (t + 1) / 30)
        with autocast():
            _, aux, cls = tower_losses(model.vision_hidden(normalise(torch.stack([g[0] for g in got]))), got)
        aux = aux + args.cls_attn * cls
        opt.zero_grad()
        aux.backward()
        torch.nn.utils.clip_grad_norm_(tower, 1.0)
        opt.step()
        if (t + 1) % 10 == 0:
            print(f"tower step {t + 1}  aux {aux.item():.4f}  {time.time() - start:.0f} s", flush=True)
    while step < args.steps and (args.minutes <= 0 or time.time() - start < args.minutes * 60):
        items = []
        for _ in range(args.batch):
            e = random.choice(episodes)
            chat = random.random() < args.chat
            items.append((e, pick_questions(e, random.randint(3, 6) if chat else args.pack, random), chat))
        got = [data(e) for e, _, _ in items]
        # A share of the samples lose a random part of their background patches, with contiguous
        # positions after, as under SparseVILA's prefill pruning (whose class-token ranking keeps
        # every object patch, see cls_attention_loss): trained on whole images only, the model
        # found regions by the image tokens' positions, and prefill pruning at p = 0.05 / 0.4 /
        # 0.75 cost 2.4 / 5.6 / 12 points (run 11, 250 test scenes, chat mode), on the questions
        # that name a region and on relations (positions.py: none with the original positions).
        drops = []
        for g in got:
            bg = (g[1][5] == 0).nonzero().flatten()
            k = int(len(bg) * random.uniform(0, 0.9)) if random.random() < args.prune_aug else 0
            drops.append(bg[torch.randperm(len(bg))[:k]])
        ids, mask, pos, blk, spans, hide = collate(tok, n_image, items, pad, drops)
        pixels = normalise(torch.stack([g[0] for g in got]))
        # Warm-up, constant, then cosine decay over the last --decay of the steps (the answers'
        # accuracy comes in late, after the attention has found the objects: under a cosine over
        # all the steps the glyph's read-out had only the tail's small rates left to be learnt).
        hold = int(args.steps * (1 - args.decay))
        lr = args.lr * min(1.0, (step + 1) / 50) * (1.0 if step < hold else 0.5 * (1 + np.cos(np.pi * (step - hold) / max(1, args.steps - hold))))
        for g in opt.param_groups:
            g["lr"] = lr
        with autocast():
            hidden = model.vision_hidden(pixels)
            logits = model(pixels, ids, hidden, positions=pos, blocks=blk, hide=hide).float()
            lm = (F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1), reduction="none") * mask[:, 1:].reshape(-1)).sum() / mask[:, 1:].sum()
            labels, aux, cls = tower_losses(hidden, got)
            att = attention_loss(model, ids, spans, items, labels[:, 5], labels[:, 4], cfg["image_token_index"], attn_layers)
            ask = qheads.loss(mid["x"], spans, items)
            glyph = gheads.loss(mid["proj"], labels)
            rel = rheads.loss(mid["after"], spans, items) if "after" in mid else torch.zeros(())
        loss = lm + args.aux * (aux + ask + glyph + rel) + args.attn * att + args.cls_attn * cls
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        step += 1
        if step % 10 == 0:
            print(f"step {step}  answer loss {lm.item():.4f}  aux {aux.item():.4f}  question {ask.item():.4f}  glyph {glyph.item():.4f}  relation {rel.item():.4f}  attention {att.item():.4f}  cls attention {cls.item():.3f}  lr {lr:.2e}  {time.time() - start:.0f} s", flush=True)
        if val and step % args.val_every == 0:
            print(f"step {step}  {validate()}", flush=True)
        if time.time() - last_save > args.save_every * 60:
            save()
            last_save = time.time()
    save()
    print(f"wrote {args.out} after {step} steps, {time.time() - start:.0f} s")
    if val:
        print(f"final  {validate()}")


if __name__ == "__main__":
    main()
