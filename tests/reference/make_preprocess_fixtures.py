"""Build the fixtures of tests/preprocess.rs (image preprocessing against the reference).

NOT run by CI or by `cargo test`: the outputs are committed. Regenerate with

    /work/refvenv/bin/python tests/reference/make_preprocess_fixtures.py

(Pillow 13.0.0, torchvision 0.29, numpy; reads 5 JPEGs and 1 PNG of
/work/shared/data/pacs-mini, copied into the fixtures so that the tests do not depend on it.)

Writes into tests/fixtures/preprocess/:

* images/<name>: the inputs. Real PACS files, plus synthetic PNGs (lossless, so decoding is
  exact) at awkward sizes and in every Pillow mode we handle (RGB, L, LA, RGBA, P, P with
  tRNS, 1-bit, 2/4-bit grey, 16-bit grey/RGB/LA, RGB with tRNS), and synthetic JPEGs.
* expected/<name>.n<N>.resized.png: the image after torchvision `Resize(N, BICUBIC)` and before
  the crop, in the source mode (P: palette indices saved as L; 1: 0/255 saved as L;
  I;16: 16-bit grey) -- this is Pillow's resampler output, compared bit for bit.
* expected/<name>.n<N>.rgb.png: after `CenterCrop(N)` and `convert("RGB")`, i.e. exactly the
  8-bit values that `ToTensor()` divides by 255 (not written when identical to .resized.png:
  an RGB image already N x N after the resize; manifest.json names the file to use).
* expected.safetensors: the final float32 CHW tensors of `ToTensor` + `Normalize(OpenAI mean,
  std)` for every case with N != 224 (N = 30, the test model's size, and N = 16 for
  allvalues_16x16.png, which holds all 256 values in each channel); tensor name `<name>@<N>`,
  metadata `<name>@<N>` -> N. The n=224 tensors are not stored (600 KB each, the fixtures must
  stay small): the test rebuilds them from the .rgb.png as float32 (x / 255 - mean) / std,
  which this script asserts is bit-identical to torchvision's output for every case.
* manifest.json: every case: file, n, Pillow mode, original size, resized size, class.
"""

import json
import shutil
import struct
import zlib
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from safetensors.numpy import save_file
from torchvision.transforms import CenterCrop, Compose, InterpolationMode, Normalize, Resize, ToTensor

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "tests" / "fixtures" / "preprocess"
IMAGES = OUT / "images"
EXPECTED = OUT / "expected"
PACS = Path("/work/shared/data/pacs-mini")

MEAN = (0.48145466, 0.4578275, 0.40821073)
STD = (0.26862954, 0.26130258, 0.27577711)


def convert_rgb(image):
    return image.convert("RGB")


def clip_transform(n):
    """OpenAI CLIP's `_transform(n)` (clip/clip.py), spelled out."""
    return Compose(
        [
            Resize(n, interpolation=InterpolationMode.BICUBIC),
            CenterCrop(n),
            convert_rgb,
            ToTensor(),
            Normalize(MEAN, STD),
        ]
    )


# ----------------------------------------------------------------------------------------
# Synthetic content: smooth gradients, a sinusoid, hard edges (ringing + clipping at 0/255)
# and a patch of noise.


def synth_rgb(w, h, seed):
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    r = 127.5 + 127.5 * np.sin(x / (2.0 + w / 25.0)) * np.cos(y / (3.0 + h / 20.0))
    g = 255.0 * (x + 2 * y) / max(1, w + 2 * h - 3)
    b = 255.0 * ((x // max(1, w // 7) + y // max(1, h // 5)) % 2)
    img = np.stack([r, g, b], -1)
    img[h // 4 : h // 2, w // 3 : w // 2] = [255, 0, 255]
    ny, nx = max(1, h // 6), max(1, w // 6)
    img[h - ny :, w - nx :] = rng.integers(0, 256, (ny, nx, 3))
    return np.clip(np.round(img), 0, 255).astype(np.uint8)


def synth_alpha(w, h, seed):
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    a = 255.0 * x / max(1, w - 1)
    a[: h // 3] = 0  # fully transparent band (colour kept, premultiplied to 0)
    a[h // 3 : h // 2] = 255
    a[h // 2 : h // 2 + 5, :] = rng.integers(0, 256, (min(5, h - h // 2), w))
    return np.clip(np.round(a), 0, 255).astype(np.uint8)


def png_chunk(kind, data):
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def write_png(path, rows, w, h, depth, color, plte=None, trns=None):
    """Minimal PNG writer for layouts Pillow cannot save (2/4-bit grey, 16-bit LA/RGB, tRNS).
    `rows`: list of already packed row bytes."""
    raw = b"".join(b"\x00" + r for r in rows)
    data = b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, depth, color, 0, 0, 0))
    if plte is not None:
        data += png_chunk(b"PLTE", bytes(plte))
    if trns is not None:
        data += png_chunk(b"tRNS", bytes(trns))
    data += png_chunk(b"IDAT", zlib.compress(raw, 9)) + png_chunk(b"IEND", b"")
    path.write_bytes(data)


def pack_bits(values, depth):
    """Pack a 2-D uint8 array of `depth`-bit samples into PNG rows."""
    rows = []
    per = 8 // depth
    for row in values:
        padded = np.concatenate([row, np.zeros((-len(row)) % per, np.uint8)])
        grouped = padded.reshape(-1, per).astype(np.uint16)
        byte = np.zeros(len(grouped), np.uint16)
        for i in range(per):
            byte |= grouped[:, i] << (8 - depth * (i + 1))
        rows.append(byte.astype(np.uint8).tobytes())
    return rows


def make_images():
    if IMAGES.exists():
        shutil.rmtree(IMAGES)
    IMAGES.mkdir(parents=True)
    cases = []  # (file name, class, [n...])

    # Real PACS images (227x227, 4:2:0 JPEG; one PNG sketch).
    for rel, n_list in [
        ("art_painting/dog/pic_001.jpg", [224, 30]),
        ("cartoon/elephant/pic_001.jpg", [224]),
        ("photo/giraffe/084_0001.jpg", [224]),
        ("photo/horse/105_0002.jpg", [224]),
        ("cartoon/person/pic_001.jpg", [224]),
        ("sketch/house/8801.png", [224]),
    ]:
        src = PACS / rel
        if not src.exists():  # fall back to the first file of that folder
            src = sorted((PACS / Path(rel).parent).iterdir())[0]
        name = "pacs_" + "_".join(src.relative_to(PACS).parts)
        shutil.copy(src, IMAGES / name)
        cases.append((name, "real_" + src.suffix[1:], n_list))

    def save(name, image, n_list=(224,), cls="png_synthetic", **kw):
        image.save(IMAGES / name, **kw)
        cases.append((name, cls, list(n_list)))

    # Every 8-bit value in every channel, no resize: checks the float32 normalisation.
    v = np.arange(256, dtype=np.uint8).reshape(16, 16)
    allv = np.dstack([v, 255 - v, (v.astype(np.uint16) * 7 % 256).astype(np.uint8)])
    save("allvalues_16x16.png", Image.fromarray(allv), [16])

    # RGB at awkward sizes.
    for (w, h), n_list in [
        ((100, 80), [224]),  # upscale
        ((227, 224), [224]),  # no resize, crop offset round(1.5) = 2
        ((301, 210), [224, 30]),
        ((120, 500), [224]),  # tall
        ((640, 90), [224, 30]),  # wide: large downscale factor on the height
        ((224, 224), [224]),  # exact
        ((1, 1), [224]),
        ((3, 2), [224]),
        ((229, 226), [224]),  # tiny downscale, odd crop offsets
    ]:
        save(f"rgb_{w}x{h}.png", Image.fromarray(synth_rgb(w, h, w * 1000 + h)), n_list)

    rgb = synth_rgb(257, 199, 7)
    save("l_257x199.png", Image.fromarray(rgb[..., 0]))
    a = synth_alpha(250, 230, 8)
    rgba = np.dstack([synth_rgb(250, 230, 9), a])
    save("rgba_250x230.png", Image.fromarray(rgba, "RGBA"), [224, 30])
    la = np.dstack([synth_rgb(190, 240, 10)[..., 1], synth_alpha(190, 240, 11)])
    save("la_190x240.png", Image.fromarray(la, "LA"))
    pal = Image.fromarray(synth_rgb(230, 260, 12)).quantize(colors=64, method=Image.Quantize.MEDIANCUT)
    save("p_230x260.png", pal)
    pal4 = Image.fromarray(synth_rgb(150, 130, 13)).quantize(colors=16, method=Image.Quantize.MEDIANCUT)
    save("p4_trns_150x130.png", pal4, bits=4, transparency=3)
    bilevel = Image.fromarray(synth_rgb(97, 61, 14)[..., 2] > 127)
    save("bilevel_97x61.png", bilevel)

    # Layouts written by hand.
    def hand(name, w, h, depth, color, rows, n_list=(224,), **kw):
        write_png(IMAGES / name, rows, w, h, depth, color, **kw)
        cases.append((name, "png_synthetic", list(n_list)))

    g4 = synth_rgb(123, 77, 15)[..., 0] >> 4
    hand("l4_123x77.png", 123, 77, 4, 0, pack_bits(g4, 4))
    g2 = synth_rgb(50, 41, 16)[..., 1] >> 6
    hand("l2_50x41.png", 50, 41, 2, 0, pack_bits(g2, 2))
    y, x = np.mgrid[0:170, 0:150]
    g16 = ((x * 37 + y * 101) * 7 % 65536).astype(">u2")
    g16[:60] = (g16[:60] % 300).astype(">u2")  # some values below 256 survive the clip to 8 bits
    hand("l16_150x170.png", 150, 170, 16, 0, [r.tobytes() for r in g16], n_list=(224, 30))
    rgb16 = (synth_rgb(160, 120, 17).astype(np.uint16) * 257 + 3).astype(">u2")
    hand("rgb16_160x120.png", 160, 120, 16, 2, [r.tobytes() for r in rgb16])
    la16 = np.dstack([synth_rgb(90, 110, 18)[..., 0], synth_alpha(90, 110, 19)]).astype(np.uint16)
    la16 = (la16 * 257 + 100).astype(">u2")
    hand("la16_90x110.png", 90, 110, 16, 4, [r.tobytes() for r in la16])
    rgbt = synth_rgb(140, 100, 20)
    hand("rgb_trns_140x100.png", 140, 100, 8, 2, [r.tobytes() for r in rgbt], trns=[0, 0, 0, 0, 0, 255])

    # Synthetic JPEGs: 4:2:0, 4:4:4 and greyscale (libjpeg-turbo decodes them inside Pillow).
    save("jpeg_333x250_q90.jpg", Image.fromarray(synth_rgb(333, 250, 21)), cls="jpeg_synthetic", quality=90)
    save(
        "jpeg444_221x230_q95.jpg",
        Image.fromarray(synth_rgb(221, 230, 22)),
        cls="jpeg_synthetic",
        quality=95,
        subsampling=0,
    )
    save("jpeg_gray_200x150.jpg", Image.fromarray(synth_rgb(200, 150, 23)[..., 1]), cls="jpeg_synthetic", quality=85)
    return cases


def resized_as_saveable(image):
    """The resized image in its own mode, as something PNG can hold losslessly."""
    if image.mode == "P":
        return Image.fromarray(np.array(image, dtype=np.uint8), "L")
    if image.mode == "1":
        return image.convert("L")
    return image


def main():
    cases = make_images()
    if EXPECTED.exists():
        shutil.rmtree(EXPECTED)
    EXPECTED.mkdir(parents=True)
    tensors, metadata, manifest = {}, {}, []
    for name, cls, n_list in cases:
        for n in n_list:
            image = Image.open(IMAGES / name)
            mode, size = image.mode, image.size
            resized = Resize(n, interpolation=InterpolationMode.BICUBIC)(image)
            cropped = CenterCrop(n)(resized)
            rgb = convert_rgb(cropped)
            tensor = Normalize(MEAN, STD)(ToTensor()(rgb))
            # The full pipeline in one go gives the same tensor.
            assert torch.equal(tensor, clip_transform(n)(Image.open(IMAGES / name))), name
            # The test rebuilds tensors as (u8 / 255 - mean) / std in float32: check it is exact.
            u8 = torch.from_numpy(np.array(rgb)).permute(2, 0, 1).float()
            mean = torch.tensor(MEAN, dtype=torch.float32)[:, None, None]
            std = torch.tensor(STD, dtype=torch.float32)[:, None, None]
            assert torch.equal(tensor, ((u8 / 255.0) - mean) / std), name
            stem = f"{name}.n{n}"
            resized_png = f"{stem}.resized.png"
            resized_as_saveable(resized).save(EXPECTED / resized_png, optimize=True)
            if resized.mode == "RGB" and resized.size == (n, n):
                rgb_png = resized_png  # the crop and the conversion change nothing
            else:
                rgb_png = f"{stem}.rgb.png"
                rgb.save(EXPECTED / rgb_png, optimize=True)
            key = f"{name}@{n}"
            if n != 224:
                tensors[key] = tensor.numpy().astype(np.float32)
                metadata[key] = str(n)
            manifest.append(
                {
                    "file": name,
                    "n": n,
                    "class": cls,
                    "mode": mode,
                    "size": list(size),
                    "resized_size": list(resized.size),
                    "resized_mode": resized.mode,
                    "resized_png": resized_png,
                    "rgb_png": rgb_png,
                }
            )
    save_file(tensors, str(OUT / "expected.safetensors"), metadata=metadata)
    (OUT / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    total = sum(p.stat().st_size for p in OUT.rglob("*") if p.is_file())
    print(f"{len(manifest)} cases, {len(tensors)} stored tensors, fixtures {total / 1e6:.2f} MB")


if __name__ == "__main__":
    main()
