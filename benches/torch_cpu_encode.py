"""PyTorch CPU throughput of transformers' CLIPVisionModelWithProjection at the ViT-B/32 shape
(random weights, float32, SDPA), the yardstick for benches/cpu_encode.rs.

Run with the reference venv (tests/reference/requirements.txt): python benches/torch_cpu_encode.py
"""
import json
import statistics
import time

import torch
from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

cfg = json.load(open("tests/fixtures/configs/clip-vit-base-patch32.json"))["vision_config"]
torch.manual_seed(0)
model = CLIPVisionModelWithProjection(CLIPVisionConfig(**cfg)).eval()
threads = torch.get_num_threads()
with torch.inference_mode():
    for batch in (1, 8, 32):
        x = torch.randn(batch, 3, 224, 224)
        model(pixel_values=x)
        reps = max(96 // batch, 6)
        times = []
        for _ in range(reps):
            t = time.perf_counter()
            model(pixel_values=x)
            times.append(time.perf_counter() - t)
        # Best-of as well as the median: the best run is the one least disturbed by other processes.
        print(f"pytorch cpu ViT-B/32 batch {batch:>3}: best {batch / min(times):.2f} images/s, "
              f"median {batch / statistics.median(times):.2f} ({reps} runs, {threads} threads, torch {torch.__version__})")
