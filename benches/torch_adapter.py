"""PyTorch (eager, CPU) timing of one FedCLIP adapter training step, to print beside
`cargo bench --bench adapter_cpu`: d = 512, C = 7, contrastive loss, Adam(5e-5, (0.9, 0.98),
1e-6, wd 0.2), one client at batch 32 and 4096. Features are given (no CLIP encoders).

    /work/refvenv/bin/python benches/torch_adapter.py
"""

import math
import statistics
import time

import torch
import torch.nn as nn

D, C = 512, 7


def main():
    torch.manual_seed(0)
    threads = torch.get_num_threads()
    text = torch.randn(C, D)
    text_n = text / text.norm(dim=1, keepdim=True)
    logit_scale = torch.tensor(math.log(100.0))
    for b in (32, 4096):
        adap = nn.Sequential(nn.Linear(D, D), nn.Tanh(), nn.Linear(D, D), nn.Softmax(dim=1))
        opt = torch.optim.Adam(adap.parameters(), lr=5e-5, betas=(0.9, 0.98), eps=1e-6,
                               weight_decay=0.2)
        labels = torch.arange(b) % C
        feats = 0.3 * text[labels] + torch.randn(b, D)
        gt = torch.arange(b)
        ce = nn.CrossEntropyLoss()

        def step():
            att = adap(feats)
            img = att * feats
            img = img / img.norm(dim=1, keepdim=True)
            t = text_n[labels]
            logits = logit_scale.exp() * img @ t.t()
            loss = (ce(logits, gt) + ce(logits.t(), gt)) / 2
            opt.zero_grad()
            loss.backward()
            opt.step()

        reps = 200 if b <= 32 else 10
        step()
        times = []
        for _ in range(reps):
            t0 = time.perf_counter()
            step()
            times.append(time.perf_counter() - t0)
        med = statistics.median(times)
        print(f"torch {torch.__version__} cpu adapter, 1 client, batch {b:>4}: "
              f"{b / med:>9.0f} samples/s ({med * 1e3:.2f} ms/step, median of {reps}, "
              f"{threads} threads)")


if __name__ == "__main__":
    main()
