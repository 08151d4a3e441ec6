"""transformers on the GPU: the yardstick for fedclip's CUDA engine (benches/gpu_encode.rs).

Two jobs, both on random weights of the real shapes (tests/fixtures/configs/*.json):

  bench    images/s of CLIPVisionModelWithProjection in fp16 with SDPA attention, eager and
           (with --compile) torch.compile, at batch 1/32/256/1024, pixels already on the GPU,
           for ViT-B/32, B/16 and L/14.

  compare  writes a random CLIPModel with save_pretrained (plus the bundled tokenizer), runs
           `fedclip embed --device cuda` on real images and prompts, and compares its projected
           embeddings with transformers' fp32 (the truth) on identical pixels / token ids. The
           gate: relative error against fp32 <= max(--tol (2e-3), 1.5 x transformers-fp16's own
           error against fp32); all three errors are printed.

Run on the device machine (benches/device_check.sh does), e.g.:
    python benches/torch_gpu_encode.py bench --models b32,b16,l14
    python benches/torch_gpu_encode.py bench --compile --batches 32,256
    python benches/torch_gpu_encode.py compare --models b32 --fedclip .device-bin/fedclip
A CPU dry run of `compare` (fp32, `--device cpu` for both) checks the script itself:
    python benches/torch_gpu_encode.py compare --torch-device cpu --fedclip target/release/fedclip
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
MODELS = {
    "b32": ("ViT-B/32", "clip-vit-base-patch32"),
    "b16": ("ViT-B/16", "clip-vit-base-patch16"),
    "l14": ("ViT-L/14", "clip-vit-large-patch14"),
}
MEAN = (0.48145466, 0.4578275, 0.40821073)
STD = (0.26862954, 0.26130258, 0.27577711)


def config_json(key: str) -> dict:
    return json.loads((ROOT / "tests/fixtures/configs" / f"{MODELS[key][1]}.json").read_text())


def vision_model(key: str, device: str, dtype: torch.dtype):
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    cfg = CLIPVisionConfig(**config_json(key)["vision_config"])
    torch.manual_seed(0)
    model = CLIPVisionModelWithProjection._from_config(cfg, attn_implementation="sdpa")
    return model.to(device=device, dtype=dtype).eval()


def timed(fn, reps: int) -> float:
    fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def bench(args) -> None:
    gpu = torch.cuda.get_device_name()
    batches = [int(b) for b in args.batches.split(",")]
    for key in args.models.split(","):
        label = MODELS[key][0]
        model = vision_model(key, "cuda", torch.float16)
        size = model.config.image_size
        runs = [("eager", model)]
        if args.compile:
            runs = [("compile", torch.compile(model))]
        for mode, m in runs:
            for b in batches:
                x = torch.randn(b, 3, size, size, device="cuda", dtype=torch.float16)
                with torch.inference_mode():
                    if mode == "compile":
                        t0 = time.perf_counter()
                        m(pixel_values=x)  # compile for this shape outside the timing
                        torch.cuda.synchronize()
                        warm = time.perf_counter() - t0
                    reps = max(3, min(50, 2048 // b))
                    s = timed(lambda: m(pixel_values=x).image_embeds, reps)
                extra = f", compile+first run {warm:.0f} s" if mode == "compile" else ""
                print(
                    f"transformers {mode} fp16 sdpa {label} batch {b:>4}: {b / s:>9.1f} images/s "
                    f"({s * 1e3:.2f} ms/batch, median of {reps}, {gpu}, torch {torch.__version__}{extra})",
                    flush=True,
                )
                del x
        del model, runs
        torch.cuda.empty_cache()


def clip_pixels(path: Path, n: int) -> torch.Tensor:
    """OpenAI CLIP's _transform(n): what fedclip's preprocessing reproduces bit for bit."""
    from PIL import Image

    try:
        from torchvision.transforms import CenterCrop, Compose, InterpolationMode, Normalize, Resize, ToTensor

        t = Compose([Resize(n, interpolation=InterpolationMode.BICUBIC), CenterCrop(n),
                     lambda im: im.convert("RGB"), ToTensor(), Normalize(MEAN, STD)])
        return t(Image.open(path))
    except ImportError:
        pass
    # The same steps with Pillow alone (torchvision's Resize/CenterCrop on PIL images).
    img = Image.open(path)
    w, h = img.size
    if min(w, h) != n:
        if w <= h:
            ow, oh = n, int(n * h / w)
        else:
            ow, oh = int(n * w / h), n
        img = img.resize((ow, oh), Image.BICUBIC)
    w, h = img.size
    if w < n or h < n:
        raise SystemExit(f"{path}: smaller than {n} after resizing (padding not implemented here)")
    top, left = int(round((h - n) / 2.0)), int(round((w - n) / 2.0))
    img = img.crop((left, top, left + n, top + n)).convert("RGB")
    x = torch.frombuffer(bytearray(img.tobytes()), dtype=torch.uint8).reshape(n, n, 3)
    x = x.permute(2, 0, 1).float().div(255)
    return (x - torch.tensor(MEAN)[:, None, None]) / torch.tensor(STD)[:, None, None]


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    return (torch.linalg.norm(a - b) / torch.linalg.norm(b)).item()


def compare(args) -> None:
    from safetensors import safe_open
    from transformers import CLIPConfig, CLIPModel, CLIPTokenizerFast

    dev = args.torch_device
    images = sorted((ROOT / "tests/fixtures/images/pacs").iterdir())
    prompts = ["a photo of a dog", "a sketch of a house", "an art painting of a guitar",
               "a cartoon of an elephant in the wild", "a photo of a person"]
    failures = []
    for key in args.models.split(","):
        label = MODELS[key][0]
        cfg_json = config_json(key)
        tmp = Path(tempfile.mkdtemp(prefix=f"fedclip-compare-{key}-"))
        try:
            torch.manual_seed(1)
            cfg = CLIPConfig(**{k: v for k, v in cfg_json.items() if k != "architectures"})
            CLIPModel(cfg).eval().save_pretrained(str(tmp))  # f32 safetensors
            for f in ("tokenizer.json", "tokenizer_config.json", "preprocessor_config.json"):
                shutil.copy(ROOT / "weights/tiny-clip" / f, tmp / f)
            (tmp / "prompts.txt").write_text("\n".join(prompts) + "\n")
            out = tmp / "embeds.safetensors"
            cmd = [args.fedclip, "embed", "--model", str(tmp), "--images", *map(str, images),
                   "--texts", str(tmp / "prompts.txt"), "--out", str(out),
                   "--device", "cuda" if dev == "cuda" else "cpu", "--batch", "4"]
            t = time.perf_counter()
            subprocess.run(cmd, check=True)
            print(f"{label}: fedclip embed took {time.perf_counter() - t:.1f} s", flush=True)
            with safe_open(str(out), "pt") as f:
                ours_img, ours_txt = f.get_tensor("image_embeds"), f.get_tensor("text_embeds")
                names = json.loads(f.metadata()["images"])
            assert names == [str(p) for p in images], names

            size = cfg.vision_config.image_size
            pixels = torch.stack([clip_pixels(p, size) for p in images])
            tok = CLIPTokenizerFast.from_pretrained(str(tmp))
            ids = tok(prompts, padding=True, return_tensors="pt")
            results = {}
            dtypes = [("fp32", torch.float32)] + ([("fp16", torch.float16)] if dev == "cuda" else [])
            for name, dtype in dtypes:
                # Loaded in fp32, then cast: the same rounding of the weights as ours.
                model = CLIPModel.from_pretrained(str(tmp), attn_implementation="sdpa")
                model = model.to(device=dev, dtype=dtype).eval()
                with torch.inference_mode():
                    if dev == "cuda":
                        torch.backends.cuda.matmul.allow_tf32 = False
                        torch.backends.cudnn.allow_tf32 = False
                    img = model.get_image_features(pixel_values=pixels.to(dev, dtype))
                    txt = model.get_text_features(input_ids=ids["input_ids"].to(dev),
                                                  attention_mask=ids["attention_mask"].to(dev))
                    # transformers 5 may wrap features in an output object.
                    img = getattr(img, "pooler_output", img)
                    txt = getattr(txt, "pooler_output", txt)
                results[name] = (img.float().cpu(), txt.float().cpu())
                del model
            f32_img, f32_txt = results["fp32"]
            ours = {"images": rel(ours_img, f32_img), "texts": rel(ours_txt, f32_txt)}
            print(f"{label}: ours vs transformers fp32: images {ours['images']:.2e}, "
                  f"texts {ours['texts']:.2e}")
            # The gate is against fp32, the truth: transformers' own fp16 keeps an fp16
            # residual stream, so its error against fp32 sets how much fp16 arithmetic costs.
            limits = {"images": args.tol, "texts": args.tol}
            if "fp16" in results:
                h_img, h_txt = results["fp16"]
                theirs = {"images": rel(h_img, f32_img), "texts": rel(h_txt, f32_txt)}
                print(f"{label}: transformers fp16 vs fp32: images {theirs['images']:.2e}, "
                      f"texts {theirs['texts']:.2e}")
                print(f"{label}: ours vs transformers fp16: images {rel(ours_img, h_img):.2e}, "
                      f"texts {rel(ours_txt, h_txt):.2e}")
                limits = {k: max(args.tol, 1.5 * theirs[k]) for k in limits}
            for k in ("images", "texts"):
                ok = ours[k] <= limits[k] and not math.isnan(ours[k])
                print(f"{label}: gate {k}: ours vs fp32 {ours[k]:.2e} <= max({args.tol:.0e}, "
                      f"1.5 x transformers fp16's) = {limits[k]:.2e}: {'pass' if ok else 'FAIL'}",
                      flush=True)
                if not ok:
                    failures.append(f"{label} {k}")
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    if failures:
        sys.exit(f"FAILED: {', '.join(failures)} outside the gate")
    print("compare: all within the gate")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="job", required=True)
    b = sub.add_parser("bench")
    b.add_argument("--models", default="b32,b16,l14")
    b.add_argument("--batches", default="1,32,256,1024")
    b.add_argument("--compile", action="store_true", help="torch.compile instead of eager")
    c = sub.add_parser("compare")
    c.add_argument("--fedclip", required=True, help="path to the fedclip binary")
    c.add_argument("--models", default="b32,b16,l14")
    c.add_argument("--tol", type=float, default=2e-3, help="the gate's floor")
    c.add_argument("--torch-device", default="cuda", choices=["cuda", "cpu"])
    args = p.parse_args()
    bench(args) if args.job == "bench" else compare(args)


if __name__ == "__main__":
    main()
