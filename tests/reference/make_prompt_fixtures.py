"""Reference fixtures for the prompt learner (src/prompt, src/heads/prompt.rs), made with
PyTorch float64 autograd.

Pinned versions (the reference venv, see tests/reference/requirements.txt):
    torch==2.15.0, transformers==5.24.0, safetensors==0.8.0, numpy==2.4.6, Python 3.12, CPU.

How to run (from the repository root):

    /work/refvenv/bin/python tests/reference/make_prompt_fixtures.py

CI does NOT run this script; its outputs under tests/fixtures/prompt/ are committed and read by
tests/prompt_learner.rs. It is deterministic: two runs give byte-identical files.

The model is CoOp's (KaiyangZhou/CoOp, trainers/coop.py): PromptLearner.forward builds each
class prompt from the token embeddings of "X X ... X <name>." with the n_ctx placeholders
replaced by ctx (class token position end / middle / front, name_lens as CoOp); TextEncoder
adds the positions, runs the causal transformer over all 77 positions, the final LayerNorm,
takes the row at tokenized_prompts.argmax(-1) and applies text_projection; CustomCLIP
normalises both features and logits = logit_scale.exp() * img @ text.T; F.cross_entropy.
The transformer is written out functionally below (pre-LN blocks as transformers'
CLIPEncoderLayer); main() first checks that it equals transformers' CLIPModel text features on
weights/tiny-clip, so the reference is the real model.

Towers:
  * "tiny-clip": weights/tiny-clip (real tokenizer; the ids are tokenised here with
    transformers' CLIPTokenizer, so the Rust test also checks its own tokenisation);
  * random towers from the counter-based generator of src/prompt/random.rs (re-implemented in
    NumPy below; the Rust test draws the same values): a small one with awkward sizes and
    GELU, and the ViT-B/32 text shape (512 wide, 12 layers, 8 heads, MLP 2048, QuickGELU,
    projection 512) with a 64-token vocabulary (SOS 62, EOS 63, the placeholder 5).
The context and the image features come from the same generator (tensor ids 1000 and 1001 of
the case seed), so they are not stored.

Each tests/fixtures/prompt/<case>.safetensors holds (float32 unless noted):
    ids [C, 77] (int64)      the tokenised "X ... X <name>." prompts, zero-padded (clip.tokenize)
    name_lens [C] (int64)    CoOp's name_lens
    labels [B] (int64)
    loss []                  the mean cross-entropy
    grad_ctx [n_ctx, d] or [C, n_ctx, d]
    dhidden_{i} [C, T, d]    gradient w.r.t. hidden state i (0: embeddings + positions; i: block
                             i's output), rows 0..T = max(EOT) + 1 (later rows are zero); the
                             small towers only
    ctx_{s} [...]            ctx after Adam step s = 0, 1, 2 on the same batch (tiny-clip only)
metadata: case (JSON: tower, seed, n_ctx, position, csc, batch, logit_scale, optimizer).
"""

import json
import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.numpy import save_file

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "tests" / "fixtures" / "prompt"
TINY_CLIP = ROOT / "weights" / "tiny-clip"
CONTEXT = 77
PHI = 0x9E3779B97F4A7C15
MASK = (1 << 64) - 1
ADAM = dict(lr=1e-2, beta1=0.9, beta2=0.98, eps=1e-6, weight_decay=0.0)
STEPS = 3

torch.set_num_threads(1)


def counter_uniform(seed, t, count, centre, scale):
    """src/prompt/random.rs's generator: value i of tensor t, stored as float32."""
    base = np.uint64(((seed * PHI) + (t << 32)) & MASK)
    with np.errstate(over="ignore"):
        z = base + np.arange(count, dtype=np.uint64) + np.uint64(PHI)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    u = (z >> np.uint64(11)).astype(np.float64) / float(1 << 53)
    return (centre + scale * (2.0 * u - 1.0)).astype(np.float32)


def t64(a):
    return torch.tensor(np.asarray(a, dtype=np.float64))


def random_tower(cfg, seed):
    """random_text_weights of src/prompt/random.rs, as float64 tensors."""
    d, f, e, v = cfg["width"], cfg["intermediate"], cfg["projection"], cfg["vocab"]

    def draw(t, shape, centre, scale):
        n = int(np.prod(shape))
        return t64(counter_uniform(seed, t, n, centre, scale).reshape(shape))

    inv = lambda n: 1.0 / math.sqrt(n)
    w = dict(
        tokens=draw(0, (v, d), 0.0, 0.02),
        positions=draw(1, (CONTEXT, d), 0.0, 0.01),
        final=(draw(2, (d,), 1.0, 0.1), draw(3, (d,), 0.0, 0.02)),
        projection=draw(4, (e, d), 0.0, inv(d)),
        blocks=[],
    )
    for layer in range(cfg["layers"]):
        t = 8 + 16 * layer
        qkv_w, qkv_b = draw(t + 2, (3 * d, d), 0.0, inv(d)), draw(t + 3, (3 * d,), 0.0, 0.02)
        w["blocks"].append(
            dict(
                ln1=(draw(t, (d,), 1.0, 0.1), draw(t + 1, (d,), 0.0, 0.02)),
                q=(qkv_w[:d], qkv_b[:d]),
                k=(qkv_w[d : 2 * d], qkv_b[d : 2 * d]),
                v=(qkv_w[2 * d :], qkv_b[2 * d :]),
                out=(draw(t + 4, (d, d), 0.0, inv(d)), draw(t + 5, (d,), 0.0, 0.02)),
                ln2=(draw(t + 6, (d,), 1.0, 0.1), draw(t + 7, (d,), 0.0, 0.02)),
                fc1=(draw(t + 8, (f, d), 0.0, inv(d)), draw(t + 9, (f,), 0.0, 0.02)),
                fc2=(draw(t + 10, (d, f), 0.0, inv(f)), draw(t + 11, (d,), 0.0, 0.02)),
            )
        )
    return w


def hf_tower(model):
    """The same structure from a transformers CLIPModel (float64)."""
    tm = model.text_model
    lin = lambda m: (m.weight.detach(), m.bias.detach())
    ln = lambda m: (m.weight.detach(), m.bias.detach())
    return dict(
        tokens=tm.embeddings.token_embedding.weight.detach(),
        positions=tm.embeddings.position_embedding.weight.detach(),
        final=ln(tm.final_layer_norm),
        projection=model.text_projection.weight.detach(),
        blocks=[
            dict(
                ln1=ln(l.layer_norm1),
                q=lin(l.self_attn.q_proj),
                k=lin(l.self_attn.k_proj),
                v=lin(l.self_attn.v_proj),
                out=lin(l.self_attn.out_proj),
                ln2=ln(l.layer_norm2),
                fc1=lin(l.mlp.fc1),
                fc2=lin(l.mlp.fc2),
            )
            for l in tm.encoder.layers
        ],
    )


def tower_forward(w, cfg, embeds, eot):
    """CoOp's TextEncoder on prompt embeddings [C, 77, d]; returns the projected features
    and the hidden states (embeddings + positions, then each block's output)."""
    c, n, d = embeds.shape
    heads = cfg["heads"]
    hd = d // heads
    eps = 1e-5
    mask = torch.full((n, n), float("-inf"), dtype=torch.float64).triu(1)
    x = embeds + w["positions"][:n]
    hidden = [x]
    for b in w["blocks"]:
        h = F.layer_norm(x, (d,), *b["ln1"], eps)
        split = lambda t: t.reshape(c, n, heads, hd).transpose(1, 2)
        q, k, v = (split(F.linear(h, *b[p])) for p in "qkv")
        att = torch.softmax(q @ k.transpose(-1, -2) * hd**-0.5 + mask, dim=-1)
        ctx = (att @ v).transpose(1, 2).reshape(c, n, d)
        x = x + F.linear(ctx, *b["out"])
        h = F.linear(F.layer_norm(x, (d,), *b["ln2"], eps), *b["fc1"])
        h = h * torch.sigmoid(1.702 * h) if cfg["act"] == "quick_gelu" else F.gelu(h)
        x = x + F.linear(h, *b["fc2"])
        hidden.append(x)
    x = F.layer_norm(x, (d,), *w["final"], eps)
    pooled = x[torch.arange(c), eot]
    return pooled @ w["projection"].T, hidden


def prompts(w, ids, name_lens, ctx, n_ctx, position):
    """CoOp's PromptLearner.forward."""
    emb = w["tokens"][ids]
    prefix, suffix = emb[:, :1], emb[:, 1 + n_ctx :]
    c = ids.shape[0]
    if ctx.dim() == 2:
        ctx = ctx.unsqueeze(0).expand(c, -1, -1)
    if position == "end":
        return torch.cat([prefix, ctx, suffix], dim=1)
    out, half = [], n_ctx // 2
    for i in range(c):
        nl = name_lens[i]
        cls, rest = suffix[i : i + 1, :nl], suffix[i : i + 1, nl:]
        if position == "middle":
            parts = [prefix[i : i + 1], ctx[i : i + 1, :half], cls, ctx[i : i + 1, half:], rest]
        else:
            parts = [prefix[i : i + 1], cls, ctx[i : i + 1], rest]
        out.append(torch.cat(parts, dim=1))
    return torch.cat(out, dim=0)


def loss_fn(w, cfg, case, ids, name_lens, ctx, images, labels, hidden_out=None):
    eot = ids.argmax(dim=-1)
    x = prompts(w, ids, name_lens, ctx, case["n_ctx"], case["position"])
    feats, hidden = tower_forward(w, cfg, x, eot)
    if hidden_out is not None:
        for h in hidden:
            h.retain_grad()
        hidden_out.extend(hidden)
    t = feats / feats.norm(dim=-1, keepdim=True)
    img = images / images.norm(dim=-1, keepdim=True)
    logits = math.exp(case["logit_scale"]) * img @ t.T
    return F.cross_entropy(logits, labels)


def random_ids(rng, classes, n_ctx, vocab):
    """Prompts SOS X*n_ctx name . EOS with names of 1..3 random tokens (ids 6..vocab-3)."""
    ids = np.zeros((classes, CONTEXT), dtype=np.int64)
    lens = []
    for c in range(classes):
        nl = 1 + c % 3
        name = rng.integers(6, vocab - 3, nl)
        row = [vocab - 2] + [5] * n_ctx + list(name) + [4, vocab - 1]
        ids[c, : len(row)] = row
        lens.append(nl)
    return ids, lens


def tokenised(classnames, n_ctx):
    from transformers import CLIPTokenizer

    tok = CLIPTokenizer.from_pretrained(TINY_CLIP)
    prompts_ = [" ".join(["X"] * n_ctx) + " " + n.replace("_", " ") + "." for n in classnames]
    ids = np.zeros((len(classnames), CONTEXT), dtype=np.int64)
    for i, p in enumerate(prompts_):
        row = tok(p)["input_ids"]
        ids[i, : len(row)] = row
    name_lens = [len(tok(n.replace("_", " "))["input_ids"]) - 2 for n in classnames]
    return ids, name_lens


def check_against_transformers(model, w, cfg):
    from transformers import CLIPTokenizer

    tok = CLIPTokenizer.from_pretrained(TINY_CLIP)
    ids = tok(["a photo of a dog.", "an X-ray of a bird"], padding="max_length", max_length=CONTEXT,
              return_tensors="pt")["input_ids"]
    want = model.get_text_features(input_ids=ids)
    want = getattr(want, "pooler_output", want)
    got, _ = tower_forward(w, cfg, w["tokens"][ids], ids.argmax(dim=-1))
    err = (got - want).abs().max().item()
    assert err < 1e-10, f"functional tower differs from transformers by {err}"


def run_case(name, w, cfg, case, ids, name_lens, seed, trace, steps):
    classes = ids.shape[0]
    d, e = cfg["width"], cfg["projection"]
    shape = (classes, case["n_ctx"], d) if case["csc"] else (case["n_ctx"], d)
    ctx0 = counter_uniform(seed, 1000, int(np.prod(shape)), 0.0, 0.05).reshape(shape)
    images = t64(counter_uniform(seed, 1001, case["batch"] * e, 0.0, 1.0).reshape(case["batch"], e))
    labels = torch.tensor([i % classes for i in range(case["batch"])], dtype=torch.int64)
    ids_t, lens = torch.tensor(ids), list(name_lens)
    ctx = t64(ctx0).requires_grad_(True)
    hidden = [] if trace else None
    loss = loss_fn(w, cfg, case, ids_t, lens, ctx, images, labels, hidden)
    loss.backward()
    seq = int(ids_t.argmax(dim=-1).max()) + 1
    out = dict(
        ids=ids,
        name_lens=np.array(name_lens, dtype=np.int64),
        labels=labels.numpy(),
        loss=np.array(loss.item(), dtype=np.float32),
        grad_ctx=ctx.grad.numpy().astype(np.float32),
    )
    for i, h in enumerate(hidden or []):
        assert h.grad[:, seq:].abs().max().item() == 0.0, "rows after the end token got gradient"
        out[f"dhidden_{i}"] = h.grad[:, :seq].numpy().astype(np.float32)
    if steps:
        ctx = t64(ctx0).requires_grad_(True)
        opt = torch.optim.Adam([ctx], lr=ADAM["lr"], betas=(ADAM["beta1"], ADAM["beta2"]),
                               eps=ADAM["eps"], weight_decay=ADAM["weight_decay"])
        for s in range(STEPS):
            opt.zero_grad()
            loss_fn(w, cfg, case, ids_t, lens, ctx, images, labels).backward()
            opt.step()
            out[f"ctx_{s}"] = ctx.detach().numpy().astype(np.float32)
    meta = dict(case, tower=name, seed=seed, optimizer=ADAM if steps else None)
    file = OUT / f"{name}-{case['position']}-{'csc' if case['csc'] else 'shared'}.safetensors"
    save_file({k: np.ascontiguousarray(v) for k, v in out.items()}, str(file),
              metadata=dict(case=json.dumps(meta, sort_keys=True)))
    print(f"{file.name}: loss {loss.item():.6f}, |grad ctx| {np.linalg.norm(out['grad_ctx']):.3e}")


def main():
    from transformers import CLIPModel

    OUT.mkdir(parents=True, exist_ok=True)
    model = CLIPModel.from_pretrained(TINY_CLIP, dtype=torch.float64).eval()
    tiny_cfg = dict(width=32, heads=4, layers=2, intermediate=128, projection=32, act="quick_gelu")
    tiny = hf_tower(model)
    check_against_transformers(model, tiny, tiny_cfg)
    names = ["dog", "guitar", "elephant", "house", "giraffe", "person", "horse_rider"]
    logit = float(np.float32(math.log(20.0)))
    for position in ["end", "middle", "front"]:
        for csc in [False, True]:
            case = dict(n_ctx=5, position=position, csc=csc, batch=9, logit_scale=logit)
            ids, lens = tokenised(names, case["n_ctx"])
            run_case("tiny-clip", tiny, tiny_cfg, case, ids, lens, 7, True,
                     position == "end" and not csc)

    small_cfg = dict(width=24, heads=3, layers=2, intermediate=40, projection=20, act="gelu",
                     vocab=40)
    small = random_tower(small_cfg, 11)
    rng = np.random.default_rng(3)
    for position in ["end", "middle", "front"]:
        for csc in [False, True]:
            case = dict(n_ctx=3, position=position, csc=csc, batch=5, logit_scale=logit)
            ids, lens = random_ids(rng, 4, case["n_ctx"], small_cfg["vocab"])
            run_case("small", small, small_cfg, case, ids, lens, 11, True, False)

    b32_cfg = dict(width=512, heads=8, layers=12, intermediate=2048, projection=512,
                   act="quick_gelu", vocab=64)
    b32 = random_tower(b32_cfg, 5)
    rng = np.random.default_rng(4)
    for position in ["end", "middle", "front"]:
        for csc in [False, True]:
            n_ctx = 16 if (position == "end" and not csc) else 4
            case = dict(n_ctx=n_ctx, position=position, csc=csc, batch=6, logit_scale=logit)
            ids, lens = random_ids(rng, 3, n_ctx, b32_cfg["vocab"])
            run_case("vitb32", b32, b32_cfg, case, ids, lens, 5, False, False)


if __name__ == "__main__":
    main()
