"""Tabulates the RESULT and PEAK lines that benches/cpu_encode.rs and benches/cpu_baselines.py
print (read from standard input or the files named): per tower and batch, each engine's best
items/s over all rounds, its GFLOP/s, the fraction of the best peak measured in the same run, and
fedclip's ratio to ONNX Runtime and PyTorch. Markdown, for BENCHMARKS.md.

FLOPs are counted as 2 per multiply-add of the products (patch embedding, QKV, attention scores
and context, out-projection, MLP, projection); LayerNorm, softmax and activations are left out.
"""
import fileinput
import json
from collections import defaultdict

CONFIG = "tests/fixtures/configs/clip-vit-base-patch32.json"


def block_macs(tokens, width, intermediate):
    """Multiply-adds of one pre-LN block over `tokens` tokens of one sequence."""
    return tokens * (4 * width * width + 2 * width * intermediate) + 2 * tokens * tokens * width


def image_gflop(cfg):
    patches = (cfg["image_size"] // cfg["patch_size"]) ** 2
    tokens, d = patches + 1, cfg["hidden_size"]
    macs = patches * 3 * cfg["patch_size"] ** 2 * d
    macs += cfg["num_hidden_layers"] * block_macs(tokens, d, cfg["intermediate_size"])
    macs += d * cfg["projection_dim"]
    return 2 * macs / 1e9


def text_gflop(cfg, seq):
    d = cfg["hidden_size"]
    macs = cfg["num_hidden_layers"] * block_macs(seq, d, cfg["intermediate_size"])
    return 2 * (macs + d * cfg["projection_dim"]) / 1e9


def main():
    cfg = json.load(open(CONFIG))
    best = defaultdict(float)
    peaks = defaultdict(float)
    for line in fileinput.input():
        f = line.split()
        if f[:1] == ["RESULT"]:
            engine, tower, batch, seq, items = f[1], f[2], int(f[3]), int(f[4]), float(f[5])
            key = (tower, batch, seq, engine)
            best[key] = max(best[key], items)
        elif f[:1] == ["PEAK"]:
            peaks[f[1]] = max(peaks[f[1]], float(f[2]))
    peak = max(peaks.values(), default=0.0)
    f32_peak = max((v for k, v in peaks.items() if "bf16" not in k), default=0.0)
    print("Peaks measured in this run (GFLOP/s): "
          + ", ".join(f"{k} {v:.0f}" for k, v in sorted(peaks.items())))
    print()
    print("| tower | batch × seq | engine | items/s | GFLOP/s | of f32 peak | of best peak |"
          " ÷ ONNX Runtime | ÷ PyTorch |")
    print("|---|---|---|---|---|---|---|---|---|")
    for tower, batch, seq in sorted({k[:3] for k in best}):
        flop = image_gflop(cfg["vision_config"]) if tower == "image" else text_gflop(
            cfg["text_config"], seq)
        speed = {e: v for (t, b, s, e), v in best.items() if (t, b, s) == (tower, batch, seq)}
        for engine, items in sorted(speed.items()):
            gflops = items * flop
            share = lambda p: f"{gflops / p:.0%}" if p else "–"
            ratio = lambda other: (f"{items / speed[other]:.2f}×"
                                   if engine.startswith("fedclip") and other in speed else "")
            shape = f"{batch}" if tower == "image" else f"{batch} × {seq}"
            print(f"| {tower} | {shape} | {engine} | {items:.2f} | {gflops:.0f} |"
                  f" {share(f32_peak)} | {share(peak)} | {ratio('onnxruntime')} |"
                  f" {ratio('pytorch')} |")

if __name__ == "__main__":
    main()
