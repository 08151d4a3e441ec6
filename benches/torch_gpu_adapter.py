"""PyTorch timing of the FedCLIP adapter training step on the GPU, to print beside
`cargo bench --bench gpu_adapter`: d = 512, C = 7, contrastive loss,
Adam(5e-5, (0.9, 0.98), 1e-6, wd 0.2), f32 (TF32 off, as torch's default for matmul):

  one   one client at batch 32 and 4096 (nn.Sequential, as FedCLIP's reference), samples/s
  many  K = 1000 clients × batch 32 in one step: the adapters stacked as [K, d, d] tensors,
        baddbmm / bmm, the per-client contrastive losses summed (each client's gradient is
        its own loss's), one Adam over the stacked tensors (element-wise, so the same as one
        Adam per client when every client steps), client-steps/s

each in three modes:

  eager    plain PyTorch (the optimiser fused=True, its fastest eager form)
  graph    the whole step (forward, backward, Adam with capturable=True) captured once in a
           CUDA graph and replayed: no per-kernel launch overhead
  compile  torch.compile of the forward + loss (backward through AOTAutograd), Adam fused

Features start in host memory and are copied to the GPU inside every timed step, as
`CudaAdapters::step` takes them from the host; `--resident` times the step with the features
already on the GPU instead.

    python benches/torch_gpu_adapter.py [one|many ...] [--modes eager,graph,compile]
        [--clients 1000] [--resident] [--device cuda]

`--device cpu` runs the eager mode on the CPU (a smoke test of this script).
"""

import argparse
import math
import statistics
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

D, C = 512, 7
LR, BETAS, EPS, WD = 5e-5, (0.9, 0.98), 1e-6, 0.2


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def batch(b, text, gen):
    labels = torch.arange(b) % C
    feats = 0.3 * text[labels] + torch.randn(b, D, generator=gen)
    return feats, labels


def adam(params, device, capturable):
    """The reference optimiser: fused on the GPU, capturable for CUDA graphs."""
    kw = dict(lr=LR, betas=BETAS, eps=EPS, weight_decay=WD)
    if device.type == "cuda":
        kw["capturable" if capturable else "fused"] = True
    return torch.optim.Adam(params, **kw)


def contrastive(img, text_n, labels, scale):
    """FedCLIP's loss for one client: symmetric CE over the batch's image/label-text logits."""
    n = img / img.norm(dim=-1, keepdim=True)
    t = text_n[labels]
    logits = scale * n @ t.t()
    gt = torch.arange(logits.shape[0], device=logits.device)
    return (F.cross_entropy(logits, gt) + F.cross_entropy(logits.t(), gt)) / 2


class One:
    """One client: nn.Sequential(Linear, Tanh, Linear, Softmax)."""

    def __init__(self, b, text, gen, device, capturable):
        self.adap = nn.Sequential(
            nn.Linear(D, D), nn.Tanh(), nn.Linear(D, D), nn.Softmax(dim=1)
        ).to(device)
        self.opt = adam(self.adap.parameters(), device, capturable)
        feats, labels = batch(b, text, gen)
        self.host = feats  # pageable memory, as a Rust Vec
        self.x = feats.to(device)
        self.labels = labels.to(device)
        self.text_n = (text / text.norm(dim=1, keepdim=True)).to(device)
        self.scale = torch.tensor(math.log(100.0), device=device).exp()
        self.samples = b

    def loss(self, x):
        att = self.adap(x)
        return contrastive(att * x, self.text_n, self.labels, self.scale)


class Many:
    """K clients stacked: W [K, d, d] ([out, in] like nn.Linear), b [K, 1, d]."""

    def __init__(self, k, b, text, gen, device, capturable):
        bound = 1 / math.sqrt(D)

        def param(*shape):
            return nn.Parameter(torch.empty(*shape, device=device).uniform_(-bound, bound))

        self.params = [param(k, D, D), param(k, 1, D), param(k, D, D), param(k, 1, D)]
        self.opt = adam(self.params, device, capturable)
        feats = torch.stack([batch(b, text, gen)[0] for _ in range(k)])  # [K, B, d]
        labels = torch.arange(b) % C
        self.host = feats
        self.x = feats.to(device)
        text_n = text / text.norm(dim=1, keepdim=True)
        self.t = text_n[labels].to(device).expand(k, b, D)  # [K, B, d]
        self.gt = torch.arange(b, device=device).repeat(k)
        self.scale = torch.tensor(math.log(100.0), device=device).exp()
        self.k, self.b = k, b
        self.samples = k * b

    def loss(self, x):
        w1, b1, w2, b2 = self.params
        h = torch.tanh(torch.baddbmm(b1, x, w1.transpose(1, 2)))
        att = torch.softmax(torch.baddbmm(b2, h, w2.transpose(1, 2)), dim=-1)
        img = att * x
        n = img / img.norm(dim=-1, keepdim=True)
        logits = self.scale * torch.bmm(n, self.t.transpose(1, 2))  # [K, B, B]
        # Mean CE per client, summed over clients: Σ_k (CE_k(rows) + CE_k(cols)) / 2.
        rows = F.cross_entropy(logits.reshape(-1, self.b), self.gt, reduction="sum")
        cols = F.cross_entropy(logits.transpose(1, 2).reshape(-1, self.b), self.gt, reduction="sum")
        return (rows + cols) / (2 * self.b)


def make_step(model, mode, resident, device):
    loss_fn = torch.compile(model.loss) if mode == "compile" else model.loss
    def step():
        x = model.x if resident else model.x.copy_(model.host, non_blocking=False)
        loss = loss_fn(x)
        model.opt.zero_grad()
        loss.backward()
        model.opt.step()
        return loss

    if mode != "graph":
        return step
    # Whole-step capture (torch.cuda.graphs, "whole network capture"): warm up on a side
    # stream, capture once, replay. The host → device copy stays outside the graph.
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for _ in range(3):
            model.opt.zero_grad()
            model.loss(model.x).backward()
            model.opt.step()
    torch.cuda.current_stream().wait_stream(s)
    graph = torch.cuda.CUDAGraph()
    # Gradients set to None, so that the captured backward writes them afresh (from the
    # graph's pool) on every replay instead of accumulating.
    model.opt.zero_grad(set_to_none=True)
    with torch.cuda.graph(graph):
        static_loss = model.loss(model.x)
        static_loss.backward()
        model.opt.step()

    def replay():
        if not resident:
            model.x.copy_(model.host)
        graph.replay()
        return static_loss

    return replay


def timed(step, reps, device):
    for _ in range(3):
        step()
    sync(device)
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        step()
        sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("cases", nargs="*", default=["one", "many"])
    ap.add_argument("--modes", default="eager,graph,compile")
    ap.add_argument("--clients", type=int, default=1000)
    ap.add_argument("--resident", action="store_true")
    ap.add_argument("--device", default="cuda")
    args = ap.parse_args()
    device = torch.device(args.device)
    modes = args.modes.split(",") if device.type == "cuda" else ["eager"]
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    gen = torch.Generator().manual_seed(0)
    text = torch.randn(C, D, generator=gen)
    name = torch.cuda.get_device_name() if device.type == "cuda" else "cpu"
    where = "features resident on the device" if args.resident else "features copied from host memory"
    print(f"torch {torch.__version__} on {name}, f32 (TF32 off), {where}")
    for mode in modes:
        if "one" in args.cases:
            for b in (32, 4096):
                model = One(b, text, gen, device, capturable=(mode == "graph"))
                step = make_step(model, mode, args.resident, device)
                reps = 200 if b <= 32 else 50
                t = timed(step, reps, device)
                print(f"torch {mode:>7} adapter, 1 client, batch {b:>4}: "
                      f"{b / t:>10.0f} samples/s ({t * 1e3:.3f} ms/step, median of {reps})")
        if "many" in args.cases:
            k, b = args.clients, 32
            model = Many(k, b, text, gen, device, capturable=(mode == "graph"))
            step = make_step(model, mode, args.resident, device)
            reps = 20
            t = timed(step, reps, device)
            print(f"torch {mode:>7} adapter, {k} clients × batch {b} (bmm): "
                  f"{k / t:.0f} client-steps/s ({k * b / t:.0f} samples/s, "
                  f"{t * 1e3:.2f} ms/step, median of {reps})")


if __name__ == "__main__":
    main()
