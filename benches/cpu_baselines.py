"""The CPU yardsticks for benches/cpu_encode.rs, measured in one process: PyTorch
(transformers' CLIP towers, float32, SDPA) and ONNX Runtime (an export of the same transformers
models), plus the machine's matrix-product peak (a large sgemm, and a bf16 GEMM where PyTorch
runs one), all with the same thread count.

Random weights at the ViT-B/32 shape (tests/fixtures/configs/clip-vit-base-patch32.json); the
speed of a tower does not depend on its weights. Every figure is a line
`RESULT <engine> <tower> <batch> <seq> <best items/s> <median items/s> <runs>` or
`PEAK <what> <GFLOP/s>`, the format benches/compare_cpu_table.py reads (fedclip's bench prints
the same lines).

Run with the reference venv (tests/reference/requirements.txt + onnxruntime, onnx):
    python benches/cpu_baselines.py [--threads N] [--export-dir DIR]
"""
import argparse
import json
import os
import statistics
import time

import numpy as np
import onnxruntime as ort
import torch
from transformers import (CLIPTextConfig, CLIPTextModelWithProjection, CLIPVisionConfig,
                          CLIPVisionModelWithProjection)

CONFIG = "tests/fixtures/configs/clip-vit-base-patch32.json"
IMAGE_BATCHES = (1, 8, 32)
# Class prompts: PACS's 7 and a larger label set, at a CoOp-like length (16 context tokens, the
# class name, SOS/EOT), padded to the longest as fedclip and transformers pad.
TEXT_SHAPES = ((7, 20), (64, 20))


def timed(fn, items, budget_s=6.0, min_runs=6):
    """Best and median items/s of `fn` after one warm-up, for at least `min_runs` runs."""
    fn()
    times = []
    start = time.perf_counter()
    while len(times) < min_runs or (time.perf_counter() - start < budget_s and len(times) < 64):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return items / min(times), items / statistics.median(times), len(times)


def report(engine, tower, batch, seq, fn):
    best, median, runs = timed(fn, batch)
    print(f"RESULT {engine} {tower} {batch} {seq} {best:.3f} {median:.3f} {runs}", flush=True)


def peaks(threads):
    """GFLOP/s of 2048³ products: numpy's sgemm (OpenBLAS), PyTorch f32 and bf16."""
    n = 2048
    flops = 2 * n**3
    a, b = np.random.rand(n, n).astype(np.float32), np.random.rand(n, n).astype(np.float32)
    best, _, _ = timed(lambda: a @ b, 1, budget_s=3)
    print(f"PEAK numpy-sgemm {best * flops / 1e9:.1f}", flush=True)
    ta, tb = torch.from_numpy(a), torch.from_numpy(b)
    best, _, _ = timed(lambda: ta @ tb, 1, budget_s=3)
    print(f"PEAK torch-f32-gemm {best * flops / 1e9:.1f}", flush=True)
    ha, hb = ta.bfloat16(), tb.bfloat16()
    best, _, _ = timed(lambda: ha @ hb, 1, budget_s=3)
    print(f"PEAK torch-bf16-gemm {best * flops / 1e9:.1f}", flush=True)


def export(model, inputs, names, path):
    """An ONNX file of `model` with a dynamic batch (and sequence) axis, made once."""
    if not os.path.exists(path):
        axes = {name: {0: "batch"} for name in names}
        if names[0] == "input_ids":
            axes["input_ids"][1] = "seq"
        torch.onnx.export(model, inputs, path, input_names=list(names[:1]),
                          output_names=list(names[1:]), dynamic_axes=axes, opset_version=17,
                          dynamo=False)
    return path


def ort_session(path, threads):
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])


def vision(cfg, threads, export_dir):
    torch.manual_seed(0)
    model = CLIPVisionModelWithProjection(CLIPVisionConfig(**cfg)).eval()
    size = cfg["image_size"]
    path = export(model, (torch.randn(1, 3, size, size),), ("pixel_values", "image_embeds"),
                  os.path.join(export_dir, "vision.onnx"))
    session = ort_session(path, threads)
    for batch in IMAGE_BATCHES:
        x = torch.randn(batch, 3, size, size)
        with torch.inference_mode():
            report("pytorch", "image", batch, 0, lambda: model(pixel_values=x))
        feed = {"pixel_values": x.numpy()}
        report("onnxruntime", "image", batch, 0, lambda: session.run(["image_embeds"], feed))


def text(cfg, threads, export_dir):
    torch.manual_seed(0)
    model = CLIPTextModelWithProjection(CLIPTextConfig(**cfg)).eval()
    ids = torch.randint(1, cfg["vocab_size"] - 2, (1, 20))
    path = export(model, (ids,), ("input_ids", "text_embeds"),
                  os.path.join(export_dir, "text.onnx"))
    session = ort_session(path, threads)
    for batch, seq in TEXT_SHAPES:
        ids = torch.randint(1, cfg["vocab_size"] - 2, (batch, seq))
        ids[:, -1] = cfg["vocab_size"] - 1  # the end token (argmax pooling picks it)
        with torch.inference_mode():
            report("pytorch", "text", batch, seq, lambda: model(input_ids=ids))
        feed = {"input_ids": ids.numpy().astype(np.int64)}
        report("onnxruntime", "text", batch, seq, lambda: session.run(["text_embeds"], feed))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--export-dir", default="target/bench-onnx")
    parser.add_argument("--skip-peak", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    os.makedirs(args.export_dir, exist_ok=True)
    print(f"# torch {torch.__version__}, onnxruntime {ort.__version__}, {args.threads} threads",
          flush=True)
    cfg = json.load(open(CONFIG))
    if not args.skip_peak:
        peaks(args.threads)
    vision(cfg["vision_config"], args.threads, args.export_dir)
    text(cfg["text_config"], args.threads, args.export_dir)


if __name__ == "__main__":
    main()
