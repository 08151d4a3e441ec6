"""Build the fixtures of tests/augment.rs (`--augment-views`: RandomResizedCrop + hflip).

NOT run by CI or by `cargo test`: the outputs are committed. Regenerate with

    /work/refvenv/bin/python tests/reference/make_augment_fixtures.py

(torch 2.15, torchvision 0.29, Pillow 13.0.0, numpy; deterministic.) Reads the images of
tests/fixtures/preprocess/images/ (committed by make_preprocess_fixtures.py).

Writes into tests/fixtures/augment/:

* params.json: RandomResizedCrop.get_params cases. torchvision's own `get_params` (the real
  function, not a copy) runs with `torch` replaced, inside torchvision's module, by a proxy
  whose `empty(1).uniform_(a, b)` and `randint(0, n, (1,))` record every draw: its arguments
  (float32 bit patterns) and its value. The values come from torch's seeded generator (so
  real float32 `uniform_` outputs), or, for the `forced` cases, from a list of float32 values
  that drive a path (every attempt failing, so the centre fallback; the bounds of each
  range). A case: image `width`, `height`, `uniform` = [[from, to, value] as f32 bits],
  `randint` = [[n, value]], `expected` = [i, j, h, w], `path` = "attempt k" or "fallback".
  Sizes: tiny (1x1, 1x2, 2x1, 3x2), extreme ratios (3x500, 500x3, 1x10000, 4000x7),
  ordinary (227x227, 640x480, 1920x1080).
* views.safetensors + views.json: pixels of `resized_crop(img, i, j, h, w, [n, n], BICUBIC)`
  then, when `flip`, `hflip`, then `convert("RGB")`: U8 HWC tensors named by case id. The
  crop boxes are recorded by hand (whole image, boxes touching each border, 1-pixel-wide and
  1-pixel-high boxes, a 1x1 box, boxes smaller than the output (upscale) and larger
  (downscale)) on images in every Pillow mode fedclip handles, at n = 24 and n = 11. The
  script asserts that ToTensor + Normalize(OpenAI mean, std) of each equals
  float32 (u8 / 255 - mean) / std, which is what the test rebuilds.
* streams.json: whole views as fedclip draws them: for run seed `seed`, view `view` and a file,
  the draw stream numpy.random.RandomState([seed, 16, d0..d7, view]) (d = BLAKE3 of the file
  bytes as 8 little-endian u32 words), a float32 uniform = (w & 0xFFFFFF) * 2**-24 of one
  32-bit word w, then u * (to - from) + from in float32; an integer in 0..n =
  `randint(0, n)` (numpy's masked rejection). torchvision's `get_params` consumes that
  stream, then `u < 0.5` decides the flip; the case records the box and the flip (the test
  checks fedclip's parameters and pixels against them); the pixels of the whole pipeline
  above at n = 20 are in views.safetensors as `stream:<file>:<seed>:<view>`.
"""

import json
import struct
from pathlib import Path

import blake3
import numpy as np
import torch
import torchvision.transforms.transforms as tvt
from PIL import Image
from safetensors.numpy import save_file
from torchvision.transforms import InterpolationMode, Normalize, ToTensor
from torchvision.transforms import functional as F

ROOT = Path(__file__).resolve().parents[2]
IMAGES = ROOT / "tests" / "fixtures" / "preprocess" / "images"
OUT = ROOT / "tests" / "fixtures" / "augment"

MEAN = (0.48145466, 0.4578275, 0.40821073)
STD = (0.26862954, 0.26130258, 0.27577711)
SCALE = (0.08, 1.0)
RATIO = (3.0 / 4.0, 4.0 / 3.0)


def f32_bits(x):
    return struct.unpack("<I", struct.pack("<f", float(x)))[0]


class RecordingTorch:
    """Stands in for the `torch` module inside torchvision.transforms.transforms: forwards
    everything, records `empty(1).uniform_` and `randint`, and can force uniform values."""

    def __init__(self, uniform_source, randint_source):
        self.uniform_source = uniform_source  # (from, to) -> float32 value
        self.randint_source = randint_source  # n -> int in [0, n)
        self.uniforms, self.randints = [], []

    def __getattr__(self, name):
        return getattr(torch, name)

    def empty(self, *shape):
        proxy = self

        class Draw:
            def uniform_(self, a, b):
                a, b = float(a), float(b)
                v = np.float32(proxy.uniform_source(a, b))
                proxy.uniforms.append([f32_bits(a), f32_bits(b), f32_bits(v)])
                return torch.tensor([v], dtype=torch.float32)

        assert shape == (1,)
        return Draw()

    def randint(self, low, high, size):
        assert low == 0 and tuple(size) == (1,)
        v = int(self.randint_source(int(high)))
        assert 0 <= v < high
        self.randints.append([int(high), v])
        return torch.tensor([v])


def get_params_recorded(width, height, uniform_source, randint_source):
    """torchvision's RandomResizedCrop.get_params with the draws recorded."""
    rec = RecordingTorch(uniform_source, randint_source)
    saved = tvt.torch
    tvt.torch = rec
    try:
        img = Image.new("L", (width, height))
        i, j, h, w = tvt.RandomResizedCrop.get_params(img, list(SCALE), list(RATIO))
    finally:
        tvt.torch = saved
    attempts = len(rec.uniforms) // 2
    path = f"attempt {attempts}" if rec.randints else "fallback"
    return {
        "width": width,
        "height": height,
        "uniform": rec.uniforms,
        "randint": rec.randints,
        "expected": [i, j, h, w],
        "path": path,
    }


def torch_uniform(gen):
    return lambda a, b: torch.empty(1).uniform_(a, b, generator=gen).item()


def torch_randint(gen):
    return lambda n: torch.randint(0, n, (1,), generator=gen).item()


def forced(values, then):
    """The given values first, then `then`'s draws (a tiny image may need more attempts)."""
    it = iter(values)

    def draw(a, b):
        v = next(it, None)
        return then(a, b) if v is None else v

    return draw


def make_params():
    sizes = [(1, 1), (1, 2), (2, 1), (3, 2), (3, 500), (500, 3), (1, 10000), (4000, 7), (227, 227), (640, 480), (1920, 1080)]
    cases = []
    gen = torch.Generator().manual_seed(1234)
    for w, h in sizes:
        for _ in range(40):
            cases.append(get_params_recorded(w, h, torch_uniform(gen), torch_randint(gen)))
    lo, hi = (float(x) for x in torch.log(torch.tensor(RATIO)))
    f32 = np.float32
    # Every attempt fails on a square: the whole area at ratio 4/3 is wider than the image.
    for w, h in [(227, 227), (1, 1), (640, 480), (3, 500), (500, 3)]:
        cases.append(get_params_recorded(w, h, forced([1.0, hi] * 10, torch_uniform(gen)), torch_randint(gen)))
    # The bounds of each range, and the last attempt succeeding.
    for w, h in [(227, 227), (640, 480), (1, 1), (3, 500)]:
        cases.append(get_params_recorded(w, h, forced([f32(0.08), lo], torch_uniform(gen)), torch_randint(gen)))
        cases.append(get_params_recorded(w, h, forced([f32(0.08), hi], torch_uniform(gen)), torch_randint(gen)))
        cases.append(get_params_recorded(w, h, forced([1.0, hi] * 9 + [f32(0.5), f32(0.0)], torch_uniform(gen)), torch_randint(gen)))
    counts = {}
    for c in cases:
        key = "fallback" if c["path"] == "fallback" else "attempt"
        counts[key] = counts.get(key, 0) + 1
    assert counts["fallback"] > 10 and counts["attempt"] > 100, counts
    return {
        "torchvision": __import__("torchvision").__version__,
        "torch": torch.__version__,
        "log_ratio": [f32_bits(lo), f32_bits(hi)],
        "cases": cases,
    }


def view_u8(image, box, flip, n):
    i, j, h, w = box
    out = F.resized_crop(image, i, j, h, w, [n, n], InterpolationMode.BICUBIC)
    if flip:
        out = F.hflip(out)
    rgb = out.convert("RGB")
    u8 = np.array(rgb)
    tensor = Normalize(MEAN, STD)(ToTensor()(rgb))
    t = torch.from_numpy(u8).permute(2, 0, 1).float()
    rebuilt = (t / 255.0 - torch.tensor(MEAN)[:, None, None]) / torch.tensor(STD)[:, None, None]
    assert torch.equal(tensor, rebuilt)
    return u8


def make_views():
    files = [
        "pacs_art_painting_dog_pic_001.jpg",
        "rgb_301x210.png",
        "rgba_250x230.png",
        "p_230x260.png",
        "l16_150x170.png",
        "la_190x240.png",
        "bilevel_97x61.png",
        "rgb_640x90.png",
        "rgb_3x2.png",
        "rgb_1x1.png",
        "jpeg_gray_200x150.jpg",
    ]
    tensors, cases = {}, []
    for name in files:
        image = Image.open(IMAGES / name)
        image.load()
        W, H = image.size
        boxes = [
            (0, 0, H, W),  # whole image
            (0, 0, max(1, H // 2), max(1, W // 3)),  # top-left corner
            (H - max(1, H // 3), W - max(1, W // 2), max(1, H // 3), max(1, W // 2)),  # bottom-right
            (0, W - 1, H, 1),  # 1 pixel wide, on the right border
            (H - 1, 0, 1, W),  # 1 pixel high, on the bottom border
            (H // 2, W // 2, 1, 1),  # one pixel
            (H // 4, W // 5, max(1, min(H, 11)), max(1, min(W, 7))),  # smaller than the output
            (H // 7, W // 9, max(1, H - H // 7 - 1), max(1, W - W // 9 - 2)),  # larger
        ]
        for k, box in enumerate(boxes):
            for n, flip in [(24, k % 2 == 1), (11, k % 2 == 0)]:
                key = f"{name}#{k}@{n}"
                tensors[key] = view_u8(image, box, flip, n)
                cases.append({"id": key, "file": name, "mode": image.mode, "box": list(box), "flip": flip, "n": n})
    return tensors, cases


class NumpyViewStream:
    """fedclip's documented draw stream of one view (see the module docstring)."""

    def __init__(self, seed, digest, view):
        words = list(struct.unpack("<8I", digest))
        self.rs = np.random.RandomState([seed, 16] + words + [view])

    def uniform(self, a, b):
        w = int(self.rs.randint(0, 2**32, dtype=np.uint64))
        u = np.float32((w & 0xFFFFFF) * (2.0**-24))
        return np.float32(u * (np.float32(b) - np.float32(a))) + np.float32(a)

    def below(self, n):
        return int(self.rs.randint(0, n))


def make_streams(tensors):
    files = ["pacs_art_painting_dog_pic_001.jpg", "rgb_640x90.png", "rgb_120x500.png", "rgb_1x1.png", "p_230x260.png"]
    cases = []
    for name in files:
        data = (IMAGES / name).read_bytes()
        digest = blake3.blake3(data).digest()
        image = Image.open(IMAGES / name)
        image.load()
        for seed in [0, 7]:
            for view in range(4):
                stream = NumpyViewStream(seed, digest, view)
                rec = get_params_recorded(image.size[0], image.size[1], stream.uniform, stream.below)
                flip = bool(stream.uniform(0.0, 1.0) < np.float32(0.5))
                key = f"stream:{name}:{seed}:{view}"
                tensors[key] = view_u8(image, rec["expected"], flip, 20)
                cases.append(
                    {
                        "file": name,
                        "seed": seed,
                        "view": view,
                        "box": rec["expected"],
                        "flip": flip,
                        "id": key,
                        "n": 20,
                    }
                )
    return cases


def main():
    torch.set_num_threads(1)
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "params.json").write_text(json.dumps(make_params()) + "\n")
    tensors, cases = make_views()
    streams = make_streams(tensors)
    save_file(tensors, str(OUT / "views.safetensors"))
    (OUT / "views.json").write_text(json.dumps(cases, indent=1) + "\n")
    (OUT / "streams.json").write_text(json.dumps(streams, indent=1) + "\n")
    total = sum(p.stat().st_size for p in OUT.iterdir() if p.is_file())
    print(f"{len(cases)} view cases, fixtures {total / 1e3:.0f} kB")


if __name__ == "__main__":
    main()
