"""PyTorch (eager, CPU) time per federated round, the same rounds as `cargo bench --bench
rounds_cpu` (fedclip, then clip-adapter: its bottleneck d → d/4 → d without biases, ReLU,
α = 0.2, cross-entropy over the class prompts at scale 100, the same Adam): K clients start from the global FedCLIP adapter with a fresh Adam, one local epoch
over 64 training samples (two steps of batch 32, the reference's contrastive loss), a uniform
FedAvg of the parameters, then every client's train/val/test split (64 + 16 + 16 samples)
evaluated with the new global adapter. d = 512, C = 7, synthetic features.

Two ways to write it in PyTorch:
- `loop`: one module and optimiser per client in a Python loop, as the FedCLIP reference
  (microsoft/PersonalizedFL) and most research code do;
- `batched`: all K adapters as stacked [K, ...] tensors stepped together with `torch.bmm` and one
  Adam (elementwise, so each client's update is its own), the fastest plain-PyTorch form.

    /work/refvenv/bin/python benches/torch_rounds.py [K ...]
"""

import copy
import math
import statistics
import sys
import time

import torch
import torch.nn as nn

D, C, TRAIN, EVAL, BATCH = 512, 7, 64, 16, 32
ADAM = dict(lr=5e-5, betas=(0.9, 0.98), eps=1e-6, weight_decay=0.2)


def samples(text, n):
    labels = torch.arange(n) % C
    return 0.3 * text[labels] + torch.randn(n, D), labels


def contrastive(img, t, scale):
    img = img / img.norm(dim=-1, keepdim=True)
    logits = scale * img @ t.transpose(-1, -2)
    gt = torch.arange(img.shape[-2])
    ce = nn.functional.cross_entropy
    if logits.dim() == 2:
        return (ce(logits, gt) + ce(logits.t(), gt)) / 2
    k = logits.shape[0]
    rows = ce(logits.reshape(-1, logits.shape[-1]), gt.repeat(k), reduction="sum")
    cols = ce(logits.transpose(1, 2).reshape(-1, logits.shape[-1]), gt.repeat(k), reduction="sum")
    # Sum over clients of each client's mean loss: gradients stay per client.
    return (rows + cols) / (2 * logits.shape[-1])


def adapter():
    return nn.Sequential(nn.Linear(D, D), nn.Tanh(), nn.Linear(D, D), nn.Softmax(dim=1))


RATIO = 0.2


class ClipAdapter(nn.Module):
    """CLIP-Adapter's residual bottleneck (Gao et al. 2021)."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Sequential(nn.Linear(D, D // 4, bias=False), nn.ReLU(),
                                nn.Linear(D // 4, D, bias=False), nn.ReLU())

    def forward(self, x):
        return RATIO * self.fc(x) + (1 - RATIO) * x


def clip_adapter_loss(model, x, y, text_n, scale):
    f = model(x)
    f = f / f.norm(dim=-1, keepdim=True)
    return nn.functional.cross_entropy(scale * f @ text_n.t(), y)


def clip_adapter_round(global_model, clients, text_n, scale):
    t0 = time.perf_counter()
    states = []
    for train_x, train_y, _, _ in clients:
        model = copy.deepcopy(global_model)
        opt = torch.optim.Adam(model.parameters(), **ADAM)
        for s in range(0, TRAIN, BATCH):
            loss = clip_adapter_loss(model, train_x[s:s + BATCH], train_y[s:s + BATCH], text_n,
                                     scale)
            opt.zero_grad()
            loss.backward()
            opt.step()
        states.append(model.state_dict())
    t1 = time.perf_counter()
    with torch.no_grad():
        avg = {n: torch.stack([s[n] for s in states]).mean(0) for n in states[0]}
        global_model.load_state_dict(avg)
    t2 = time.perf_counter()
    with torch.no_grad():
        for train_x, _, val_x, test_x in clients:
            for x in (train_x, val_x, test_x):
                f = global_model(x)
                (f / f.norm(dim=-1, keepdim=True) @ text_n.t()).argmax(-1)
    t3 = time.perf_counter()
    return t1 - t0, t2 - t1, t3 - t2


def clip_adapter_batched_round(params, global_params, train_x, train_y, evals, text_n, scale):
    def fwd(ps, x):
        w1, w2 = ps
        a = torch.relu(torch.relu(x @ w1.transpose(-1, -2)) @ w2.transpose(-1, -2))
        f = RATIO * a + (1 - RATIO) * x
        return f / f.norm(dim=-1, keepdim=True)

    t0 = time.perf_counter()
    with torch.no_grad():
        for p, g in zip(params, global_params):
            p.copy_(g.expand_as(p))
    opt = torch.optim.Adam(params, **ADAM)
    k = train_x.shape[0]
    for s in range(0, TRAIN, BATCH):
        x, y = train_x[:, s:s + BATCH], train_y[:, s:s + BATCH]
        logits = scale * fwd(params, x) @ text_n.t()
        # Sum over clients of each client's mean loss: gradients stay per client.
        loss = nn.functional.cross_entropy(logits.reshape(-1, C), y.reshape(-1),
                                           reduction="sum") / x.shape[1]
        opt.zero_grad()
        loss.backward()
        opt.step()
    t1 = time.perf_counter()
    with torch.no_grad():
        new_global = [p.mean(0) for p in params]
    t2 = time.perf_counter()
    with torch.no_grad():
        for x in evals:
            (fwd(new_global, x) @ text_n.t()).argmax(-1)
    t3 = time.perf_counter()
    assert k == train_x.shape[0]
    return (t1 - t0, t2 - t1, t3 - t2), new_global


def predict(att_fn, feats, text_n):
    img = att_fn(feats) * feats
    img = img / img.norm(dim=-1, keepdim=True)
    return (img @ text_n.t()).argmax(-1)


def loop_round(global_model, clients, text_n, scale):
    t0 = time.perf_counter()
    states = []
    for train_x, train_y, _, _ in clients:
        model = copy.deepcopy(global_model)
        opt = torch.optim.Adam(model.parameters(), **ADAM)
        for s in range(0, TRAIN, BATCH):
            x, y = train_x[s:s + BATCH], train_y[s:s + BATCH]
            loss = contrastive(model(x) * x, text_n[y], scale)
            opt.zero_grad()
            loss.backward()
            opt.step()
        states.append(model.state_dict())
    t1 = time.perf_counter()
    with torch.no_grad():
        avg = {n: torch.stack([s[n] for s in states]).mean(0) for n in states[0]}
        global_model.load_state_dict(avg)
    t2 = time.perf_counter()
    with torch.no_grad():
        for train_x, _, val_x, test_x in clients:
            for x in (train_x, val_x, test_x):
                predict(global_model, x, text_n)
    t3 = time.perf_counter()
    return t1 - t0, t2 - t1, t3 - t2


class Stacked:
    """K adapters as [K, ...] tensors."""

    def __init__(self, k, model):
        w1, b1, w2, b2 = (p.detach() for p in model.parameters())
        self.global_params = [w1.clone(), b1.clone(), w2.clone(), b2.clone()]
        self.params = [p.unsqueeze(0).repeat(k, *([1] * p.dim())).requires_grad_() for p in
                       self.global_params]

    def attention(self, params, x):
        w1, b1, w2, b2 = params
        h = torch.tanh(torch.baddbmm(b1.unsqueeze(-2), x, w1.transpose(1, 2)))
        return torch.softmax(torch.baddbmm(b2.unsqueeze(-2), h, w2.transpose(1, 2)), dim=-1)


def batched_round(stacked, train_x, train_y, evals, text_n, scale):
    t0 = time.perf_counter()
    with torch.no_grad():
        for p, g in zip(stacked.params, stacked.global_params):
            p.copy_(g.expand_as(p))
    opt = torch.optim.Adam(stacked.params, **ADAM)
    for s in range(0, TRAIN, BATCH):
        x, y = train_x[:, s:s + BATCH], train_y[:, s:s + BATCH]
        loss = contrastive(stacked.attention(stacked.params, x) * x, text_n[y], scale)
        opt.zero_grad()
        loss.backward()
        opt.step()
    t1 = time.perf_counter()
    with torch.no_grad():
        stacked.global_params = [p.mean(0) for p in stacked.params]
    t2 = time.perf_counter()
    with torch.no_grad():
        g = [p.unsqueeze(0) for p in stacked.global_params]
        for x in evals:
            att = stacked.attention([g[0].expand(x.shape[0], -1, -1), g[1].expand(x.shape[0], -1),
                                     g[2].expand(x.shape[0], -1, -1), g[3].expand(x.shape[0], -1)],
                                    x)
            img = att * x
            img = img / img.norm(dim=-1, keepdim=True)
            (img @ text_n.t()).argmax(-1)
    t3 = time.perf_counter()
    return t1 - t0, t2 - t1, t3 - t2


def report(name, k, times, reps, method="fedclip"):
    times.sort(key=sum)
    tr, ag, ev = times[len(times) // 2]
    print(f"torch rounds cpu, method {method} ({name}), K={k}: {tr + ag + ev:.4f} s/round "
          f"(train {tr:.4f}, aggregate {ag:.4f}, evaluate {ev:.4f}; median of {reps}, "
          f"{torch.get_num_threads()} threads)", flush=True)


def main():
    ks = [int(a) for a in sys.argv[1:]] or [3, 1000]
    torch.manual_seed(0)
    text = torch.randn(C, D)
    text_n = text / text.norm(dim=1, keepdim=True)
    scale = math.exp(math.log(100.0))
    print(f"torch {torch.__version__}", flush=True)
    for k in ks:
        clients = []
        for _ in range(k):
            tx, ty = samples(text, TRAIN)
            vx, _ = samples(text, EVAL)
            sx, _ = samples(text, EVAL)
            clients.append((tx, ty, vx, sx))
        reps = 30 if k <= 10 else 3
        model = adapter()
        loop_round(model, clients, text_n, scale)
        report("loop", k, [loop_round(model, clients, text_n, scale) for _ in range(reps)], reps)
        stacked = Stacked(k, adapter())
        train_x = torch.stack([c[0] for c in clients])
        train_y = torch.stack([c[1] for c in clients])
        evals = [train_x, torch.stack([c[2] for c in clients]), torch.stack([c[3] for c in clients])]
        batched_round(stacked, train_x, train_y, evals, text_n, scale)
        report("batched", k, [batched_round(stacked, train_x, train_y, evals, text_n, scale)
                              for _ in range(reps)], reps)
        del stacked
        model = ClipAdapter()
        clip_adapter_round(model, clients, text_n, scale)
        report("loop", k, [clip_adapter_round(model, clients, text_n, scale)
                           for _ in range(reps)], reps, "clip-adapter")
        g = [model.fc[0].weight.detach().clone(), model.fc[2].weight.detach().clone()]
        params = [p.unsqueeze(0).repeat(k, 1, 1).requires_grad_() for p in g]
        times = []
        for _ in range(reps + 1):
            t, g = clip_adapter_batched_round(params, g, train_x, train_y, evals, text_n, scale)
            times.append(t)
        report("batched", k, times[1:], reps, "clip-adapter")


if __name__ == "__main__":
    main()
