"""The default model in PyTorch, for training: a LLaVA (CLIP-style vision tower with a CLS token,
two-layer MLP projector, Llama decoder) whose parameters carry the llava-hf tensor names, so a model
folder written by the engine (`writeTaskModel`) loads into it and saves back 1:1.

Nothing here needs pip: Debian's python3-torch (which brings numpy). Safetensors are read and
written by hand (an 8-byte header length, a JSON header, then the raw little-endian tensors).
"""
import json
import math
import os
import struct

import numpy as np
import torch
from torch import nn
import torch.nn.functional as F

DTYPES = {"F32": (np.float32, 4), "F16": (np.float16, 2), "BF16": (np.uint16, 2)}


def read_safetensors(path):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        data = f.read()
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        dt, _ = DTYPES[info["dtype"]]
        a, b = info["data_offsets"]
        raw = np.frombuffer(data[a:b], dtype=dt).reshape(info["shape"])
        if info["dtype"] == "BF16":  # the high half of an f32
            raw = (raw.astype(np.uint32) << 16).view(np.float32)
        out[name] = torch.from_numpy(raw.astype(np.float32).copy())
    return out


def write_safetensors(path, tensors, dtype="f32"):
    """dtype f32, or bf16 (rounded to nearest even, as torch's bfloat16 conversion)."""
    header, blobs, offset = {}, [], 0
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous().float()
        if dtype == "bf16":
            a = t.to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16)
        else:
            a = t.numpy()
        header[name] = {"dtype": "BF16" if dtype == "bf16" else "F32", "shape": list(a.shape), "data_offsets": [offset, offset + a.nbytes]}
        blobs.append(a.tobytes())
        offset += a.nbytes
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * ((8 - len(h) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)))
        f.write(h)
        for b in blobs:
            f.write(b)


class ClipLayer(nn.Module):
    def __init__(self, d, ffn, heads, eps):
        super().__init__()
        self.heads = heads
        self.self_attn = nn.Module()
        for p in ("q_proj", "k_proj", "v_proj", "out_proj"):
            setattr(self.self_attn, p, nn.Linear(d, d))
        self.layer_norm1 = nn.LayerNorm(d, eps=eps)
        self.layer_norm2 = nn.LayerNorm(d, eps=eps)
        self.mlp = nn.Module()
        self.mlp.fc1 = nn.Linear(d, ffn)
        self.mlp.fc2 = nn.Linear(ffn, d)
        self.keep_cls, self.cls_probs = False, None

    def forward(self, x):
        b, t, d = x.shape
        hd = d // self.heads
        h = self.layer_norm1(x)
        a = self.self_attn
        q = a.q_proj(h).view(b, t, self.heads, hd).transpose(1, 2)
        k = a.k_proj(h).view(b, t, self.heads, hd).transpose(1, 2)
        v = a.v_proj(h).view(b, t, self.heads, hd).transpose(1, 2)
        probs = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(hd), dim=-1)
        self.cls_probs = probs[:, :, 0] if self.keep_cls else None  # [B, heads, T]: the class token's row, for training its salience
        att = probs @ v
        x = x + a.out_proj(att.transpose(1, 2).reshape(b, t, d))
        h = self.mlp.fc1(self.layer_norm2(x))
        h = h * torch.sigmoid(1.702 * h)  # quick_gelu
        return x + self.mlp.fc2(h)


class RMSNorm(nn.Module):
    def __init__(self, d, eps):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(d))
        self.eps = eps

    def forward(self, x):
        return self.weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps))


class LlamaLayer(nn.Module):
    def __init__(self, d, ffn, heads, kv_heads, eps):
        super().__init__()
        self.heads, self.kv_heads, self.hd = heads, kv_heads, d // heads
        self.self_attn = nn.Module()
        self.self_attn.q_proj = nn.Linear(d, d, bias=False)
        self.self_attn.k_proj = nn.Linear(d, kv_heads * self.hd, bias=False)
        self.self_attn.v_proj = nn.Linear(d, kv_heads * self.hd, bias=False)
        self.self_attn.o_proj = nn.Linear(d, d, bias=False)
        self.mlp = nn.Module()
        self.mlp.gate_proj = nn.Linear(d, ffn, bias=False)
        self.mlp.up_proj = nn.Linear(d, ffn, bias=False)
        self.mlp.down_proj = nn.Linear(ffn, d, bias=False)
        self.input_layernorm = RMSNorm(d, eps)
        self.post_attention_layernorm = RMSNorm(d, eps)
        self.keep_probs, self.probs = False, None

    def forward(self, x, cos, sin, mask):
        b, t, d = x.shape
        a = self.self_attn
        h = self.input_layernorm(x)
        q = a.q_proj(h).view(b, t, self.heads, self.hd).transpose(1, 2)
        k = a.k_proj(h).view(b, t, self.kv_heads, self.hd).transpose(1, 2)
        v = a.v_proj(h).view(b, t, self.kv_heads, self.hd).transpose(1, 2)
        q, k = q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin
        rep = self.heads // self.kv_heads
        k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
        probs = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(self.hd) + mask, dim=-1)
        self.probs = probs if self.keep_probs else None  # [B, heads, T, T], for attention supervision in training
        att = probs @ v
        x = x + a.o_proj(att.transpose(1, 2).reshape(b, t, d))
        h = self.post_attention_layernorm(x)
        m = self.mlp
        return x + m.down_proj(F.silu(m.gate_proj(h)) * m.up_proj(h))


def rotate_half(x):
    h = x.shape[-1] // 2
    return torch.cat((-x[..., h:], x[..., :h]), dim=-1)


class TaskVLM(nn.Module):
    """LlavaForConditionalGeneration's computation with its tensor names (f32)."""

    def __init__(self, config):
        super().__init__()
        self.config = config
        vc, tc = config["vision_config"], config["text_config"]
        dv, dt, p = vc["hidden_size"], tc["hidden_size"], vc["patch_size"]
        n = (vc["image_size"] // p) ** 2
        self.vision_tower = nn.Module()
        vm = self.vision_tower.vision_model = nn.Module()
        vm.embeddings = nn.Module()
        vm.embeddings.class_embedding = nn.Parameter(torch.zeros(dv))
        vm.embeddings.patch_embedding = nn.Conv2d(3, dv, p, stride=p, bias=False)
        vm.embeddings.position_embedding = nn.Embedding(n + 1, dv)
        vm.pre_layrnorm = nn.LayerNorm(dv, eps=vc["layer_norm_eps"])
        vm.post_layernorm = nn.LayerNorm(dv, eps=vc["layer_norm_eps"])
        vm.encoder = nn.Module()
        vm.encoder.layers = nn.ModuleList(ClipLayer(dv, vc["intermediate_size"], vc["num_attention_heads"], vc["layer_norm_eps"]) for _ in range(vc["num_hidden_layers"]))
        self.multi_modal_projector = nn.Module()
        self.multi_modal_projector.linear_1 = nn.Linear(dv, dt)
        self.multi_modal_projector.linear_2 = nn.Linear(dt, dt)
        self.language_model = nn.Module()
        lm = self.language_model.model = nn.Module()
        lm.embed_tokens = nn.Embedding(tc["vocab_size"], dt)
        lm.layers = nn.ModuleList(LlamaLayer(dt, tc["intermediate_size"], tc["num_attention_heads"], tc["num_key_value_heads"], tc["rms_norm_eps"]) for _ in range(tc["num_hidden_layers"]))
        lm.norm = RMSNorm(dt, tc["rms_norm_eps"])
        self.language_model.lm_head = nn.Linear(dt, tc["vocab_size"], bias=False)

    def vision_hidden(self, pixels):
        """pixels [B, 3, S, S] -> the tower's hidden states at the feature layer [B, 1 + n, vision hidden] (CLS first)."""
        vm = self.vision_tower.vision_model
        x = vm.embeddings.patch_embedding(pixels).flatten(2).transpose(1, 2)
        cls = vm.embeddings.class_embedding.expand(x.shape[0], 1, -1)
        x = torch.cat([cls, x], dim=1) + vm.embeddings.position_embedding.weight
        x = vm.pre_layrnorm(x)
        layer = self.config["vision_feature_layer"]
        keep = len(vm.encoder.layers) + 1 + layer if layer < 0 else layer  # hidden state index
        for l in vm.encoder.layers[:keep]:
            x = l(x)
        return x

    def image_features(self, pixels, hidden=None):
        """pixels [B, 3, S, S] -> projected features of the patches [B, n, text hidden] (feature layer -2, CLS dropped)."""
        x = (self.vision_hidden(pixels) if hidden is None else hidden)[:, 1:]
        pr = self.multi_modal_projector
        return pr.linear_2(F.gelu(pr.linear_1(x)))

    def forward(self, pixels, input_ids, hidden=None, positions=None, blocks=None, hide=None):
        """pixels [B, 3, S, S], input_ids [B, T] with one run of image tokens per row -> logits [B, T, V].
        hidden: the tower's feature-layer states of these pixels when the caller has them already.
        positions [B, T]: RoPE positions (default 0..T-1). blocks [B, T]: to pack independent
        questions after one image, a row sees the earlier rows of block 0 (the shared prefix) and of
        its own block (default: all 0, plain causal attention). hide [B, T] (bool): tokens no other
        row attends to (image tokens left out as by prefill pruning; give the rest contiguous
        positions)."""
        lm = self.language_model.model
        x = lm.embed_tokens(input_ids.clamp(max=lm.embed_tokens.num_embeddings - 1))
        feats = self.image_features(pixels, hidden)
        is_img = input_ids == self.config["image_token_index"]
        x = x.masked_scatter(is_img.unsqueeze(-1), feats.reshape(-1, feats.shape[-1])[: int(is_img.sum())].to(x.dtype))
        t = input_ids.shape[1]
        tc = self.config["text_config"]
        hd = tc["hidden_size"] // tc["num_attention_heads"]
        inv = 1.0 / (tc.get("rope_theta", 10000.0) ** (torch.arange(0, hd, 2, dtype=torch.float32) / hd))
        if positions is None:
            positions = torch.arange(t).expand(input_ids.shape[0], t)
        ang = positions[..., None].float() * inv
        emb = torch.cat([ang, ang], dim=-1)[:, None]  # [B, 1, T, hd]
        cos, sin = emb.cos(), emb.sin()
        allowed = torch.ones(t, t, dtype=torch.bool).tril()[None]
        if blocks is not None:
            allowed = allowed & ((blocks[:, None, :] == 0) | (blocks[:, None, :] == blocks[:, :, None]))
        if hide is not None:
            allowed = allowed & (~hide[:, None, :] | torch.eye(t, dtype=torch.bool)[None])
        mask = torch.zeros(allowed.shape).masked_fill(~allowed, float("-inf"))[:, None]  # [B or 1, 1, T, T]
        for l in lm.layers:
            x = l(x, cos, sin, mask)
        return self.language_model.lm_head(lm.norm(x))


def load_folder(folder):
    with open(os.path.join(folder, "config.json")) as f:
        config = json.load(f)
    model = TaskVLM(config)
    tensors = read_safetensors(os.path.join(folder, "model.safetensors"))
    missing, unexpected = model.load_state_dict(tensors, strict=False)
    if missing or unexpected:
        raise ValueError(f"{folder}: tensors missing {missing}, unexpected {unexpected}")
    return model


def save_weights(model, folder, dtype="f32"):
    write_safetensors(os.path.join(folder, "model.safetensors"), dict(model.state_dict()), dtype)
