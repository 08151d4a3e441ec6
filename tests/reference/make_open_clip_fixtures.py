"""Reference fixtures for fedclip's open_clip layout, made with open_clip 3.3 itself.

How to run (from the repository root, with the reference venv of tests/reference/requirements.txt):

    /work/refvenv/bin/python tests/reference/make_open_clip_fixtures.py
    /work/refvenv/bin/python tests/reference/make_open_clip_fixtures.py --vit-b-32 /tmp/oc-b32

The first form writes the committed fixtures (small custom configs with ViT-B-32's structure):
  tests/fixtures/models/oc-tiny-quickgelu/   open_clip_config.json + open_clip_model.safetensors (F16),
                                             `quick_gelu: true`, OpenAI vocabulary (49408), no tokenizer file
  tests/fixtures/models/oc-tiny-gelu/        the same structure with nn.GELU (`quick_gelu` absent), F32,
                                             a 1000-token vocabulary, a bare model config as config.json
  tests/fixtures/models/oc-tiny-gelu-hf/     oc-tiny-gelu's very weights converted to a transformers CLIPModel
                                             save (config.json + model.safetensors), checked here against
                                             transformers
  tests/fixtures/expected/oc-tiny-*.safetensors   pixel_values, input_ids, image_features, text_features

The second form writes, outside the repository, open_clip's real ViT-B-32 and ViT-B-32-quickgelu
(random weights) with their features, which `FEDCLIP_OPEN_CLIP_VIT_B32=<dir> cargo test --release
--test open_clip -- vit_b_32` compares against (600 MB, too large to commit).

Random weights: open_clip's own init, then every tensor is perturbed (biases and LayerNorm
parameters are zero or one at init, which would hide a mis-mapped name). Deterministic: fixed
seeds, one thread. CI does not run this script.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

import open_clip
from open_clip.model import CLIP
from safetensors.torch import save_file
from transformers import CLIPConfig, CLIPModel

sys.path.insert(0, str(Path(__file__).resolve().parent))
from make_fixtures import save_deterministic  # noqa: E402  (byte-stable safetensors)

REPO = Path(__file__).resolve().parents[2]
MODELS = REPO / "tests/fixtures/models"
EXPECTED = REPO / "tests/fixtures/expected"

PROMPTS = ["a picture of a dog", "a picture of a house", "an Office-Home Alarm_Clock, drawn"]

# ViT-B-32's structure (patch embedding, class token, pre/post LN, blocks, projections),
# at sizes small enough to commit.
TINY_VISION = {"image_size": 64, "layers": 2, "width": 64, "head_width": 16, "patch_size": 16}
TINY_TEXT = {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 4, "layers": 2}


def perturb(model: torch.nn.Module, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.state_dict().items():
            if name == "logit_scale":
                continue
            noise = torch.randn(p.shape, generator=g, dtype=torch.float32)
            if name.endswith(".weight") and p.ndim == 1:  # LayerNorm gains
                p.copy_(1.0 + 0.1 * noise)
            else:
                p.add_(0.02 * noise)


def open_clip_state(model: torch.nn.Module, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    # attn_mask is a non-persistent buffer: state_dict() does not hold it.
    return {k: v.detach().to(dtype).contiguous() for k, v in model.state_dict().items()}


def reload_rounded(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    """The reference runs in f32 on exactly the (possibly f16-rounded) stored values."""
    model.load_state_dict({k: v.float() for k, v in state.items()})


def features(model: CLIP, pixels: torch.Tensor, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    with torch.no_grad():
        return model.encode_image(pixels), model.encode_text(ids)


def tiny_ids(vocab: int, seed: int) -> torch.Tensor:
    """Token rows without a tokenizer: bos 1, random ids, the end token vocab-1 (the maximum,
    where open_clip's argmax pooling lands), then 0 padding, to 77."""
    g = torch.Generator().manual_seed(seed)
    rows = []
    for length in (5, 11, 77):
        body = torch.randint(2, vocab - 1, (length - 2,), generator=g)
        row = torch.cat([torch.tensor([1]), body, torch.tensor([vocab - 1])])
        rows.append(torch.nn.functional.pad(row, (0, 77 - length)))
    return torch.stack(rows)


def write_expected(name: str, pixels, ids, image, text, meta: dict[str, str]) -> None:
    EXPECTED.mkdir(parents=True, exist_ok=True)
    save_deterministic(
        {
            "pixel_values": pixels.contiguous(),
            "input_ids": ids.to(torch.int64).contiguous(),
            "image_features": image.contiguous(),
            "text_features": text.contiguous(),
        },
        EXPECTED / f"{name}.safetensors",
        meta,
    )


def hub_config(model_cfg: dict) -> dict:
    """The `open_clip_config.json` open_clip's push_to_hf_hub writes."""
    return {
        "model_cfg": model_cfg,
        "preprocess_cfg": {
            "mean": list(open_clip.OPENAI_DATASET_MEAN),
            "std": list(open_clip.OPENAI_DATASET_STD),
            "interpolation": "bicubic",
            "resize_mode": "shortest",
        },
    }


def to_hf(state: dict[str, torch.Tensor], cfg: dict) -> tuple[dict, dict[str, torch.Tensor]]:
    """An open_clip CLIP state dict as a transformers CLIPModel save, by name mapping alone."""
    v, t = cfg["vision_cfg"], cfg["text_cfg"]
    act = "quick_gelu" if cfg.get("quick_gelu") else "gelu"
    hf_cfg = CLIPConfig(
        projection_dim=cfg["embed_dim"],
        vision_config=dict(
            hidden_size=v["width"], intermediate_size=4 * v["width"], num_hidden_layers=v["layers"],
            num_attention_heads=v["width"] // v["head_width"], image_size=v["image_size"],
            patch_size=v["patch_size"], hidden_act=act, layer_norm_eps=1e-5,
        ),
        # eos_token_id 2: transformers' legacy rule, pooling at argmax(input_ids) as open_clip does.
        text_config=dict(
            vocab_size=t["vocab_size"], hidden_size=t["width"], intermediate_size=4 * t["width"],
            num_hidden_layers=t["layers"], num_attention_heads=t["heads"],
            max_position_embeddings=t["context_length"], hidden_act=act, layer_norm_eps=1e-5,
            bos_token_id=1, eos_token_id=2, pad_token_id=0,
        ),
    ).to_dict()
    out: dict[str, torch.Tensor] = {}

    def blocks(oc: str, hf: str, layers: int, d: int) -> None:
        for i in range(layers):
            a, b = f"{oc}transformer.resblocks.{i}.", f"{hf}encoder.layers.{i}."
            for part, n in zip(("q", "k", "v"), range(3)):
                out[f"{b}self_attn.{part}_proj.weight"] = state[f"{a}attn.in_proj_weight"][n * d:(n + 1) * d]
                out[f"{b}self_attn.{part}_proj.bias"] = state[f"{a}attn.in_proj_bias"][n * d:(n + 1) * d]
            for src, dst in (("attn.out_proj", "self_attn.out_proj"), ("ln_1", "layer_norm1"),
                             ("ln_2", "layer_norm2"), ("mlp.c_fc", "mlp.fc1"), ("mlp.c_proj", "mlp.fc2")):
                out[f"{b}{dst}.weight"] = state[f"{a}{src}.weight"]
                out[f"{b}{dst}.bias"] = state[f"{a}{src}.bias"]

    vm, tm = "vision_model.", "text_model."
    out[f"{vm}embeddings.class_embedding"] = state["visual.class_embedding"]
    out[f"{vm}embeddings.patch_embedding.weight"] = state["visual.conv1.weight"]
    out[f"{vm}embeddings.position_embedding.weight"] = state["visual.positional_embedding"]
    for src, dst in (("ln_pre", "pre_layrnorm"), ("ln_post", "post_layernorm")):
        out[f"{vm}{dst}.weight"] = state[f"visual.{src}.weight"]
        out[f"{vm}{dst}.bias"] = state[f"visual.{src}.bias"]
    blocks("visual.", vm, v["layers"], v["width"])
    out["visual_projection.weight"] = state["visual.proj"].t()
    out[f"{tm}embeddings.token_embedding.weight"] = state["token_embedding.weight"]
    out[f"{tm}embeddings.position_embedding.weight"] = state["positional_embedding"]
    out[f"{tm}final_layer_norm.weight"] = state["ln_final.weight"]
    out[f"{tm}final_layer_norm.bias"] = state["ln_final.bias"]
    blocks("", tm, t["layers"], t["width"])
    out["text_projection.weight"] = state["text_projection"].t()
    out["logit_scale"] = state["logit_scale"]
    return hf_cfg, {k: v.contiguous() for k, v in out.items()}


def make_tiny(name: str, quick_gelu: bool, dtype: torch.dtype, vocab: int, seed: int,
              bare_config: bool) -> None:
    text_cfg = dict(TINY_TEXT, vocab_size=vocab)
    cfg = {"embed_dim": 32, "vision_cfg": TINY_VISION, "text_cfg": text_cfg}
    if quick_gelu:
        cfg["quick_gelu"] = True
    torch.manual_seed(seed)
    model = CLIP(**cfg).eval()
    perturb(model, seed + 1)
    state = open_clip_state(model, dtype)
    reload_rounded(model, state)
    out = MODELS / name
    out.mkdir(parents=True, exist_ok=True)
    for old in out.iterdir():
        old.unlink()
    if bare_config:  # as open_clip/model_configs/<name>.json, under the HF file names
        (out / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
        save_file(state, str(out / "model.safetensors"))
    else:
        (out / "open_clip_config.json").write_text(json.dumps(hub_config(cfg), indent=2) + "\n")
        save_file(state, str(out / "open_clip_model.safetensors"))
    g = torch.Generator().manual_seed(seed + 2)
    pixels = torch.randn(2, 3, 64, 64, generator=g)
    if vocab == 49408:
        ids = open_clip.tokenize(PROMPTS)  # OpenAI BPE, padded with 0 to 77
    else:
        ids = tiny_ids(vocab, seed + 3)
    image, text = features(model, pixels, ids)
    meta = {
        "open_clip": open_clip.__version__,
        "torch": torch.__version__,
        "config": json.dumps(cfg, sort_keys=True),
        "prompts": json.dumps(PROMPTS if vocab == 49408 else []),
    }
    if vocab != 49408:
        hf_cfg, hf_state = to_hf({k: v.float() for k, v in state.items()}, cfg)
        hf_dir = MODELS / f"{name}-hf"
        hf_dir.mkdir(parents=True, exist_ok=True)
        (hf_dir / "config.json").write_text(json.dumps(hf_cfg, indent=2, sort_keys=True) + "\n")
        save_file(hf_state, str(hf_dir / "model.safetensors"))
        hf = CLIPModel.from_pretrained(str(hf_dir), attn_implementation="eager").eval()
        with torch.no_grad():
            hf_image = hf.get_image_features(pixel_values=pixels)
            hf_text = hf.get_text_features(input_ids=ids)
        hf_image = getattr(hf_image, "pooler_output", hf_image)
        hf_text = getattr(hf_text, "pooler_output", hf_text)
        err = max((hf_image - image).abs().max().item(), (hf_text - text).abs().max().item())
        print(f"{name}: transformers on the converted save vs open_clip: max |diff| {err:.2e}")
        assert err < 1e-5, err
        meta["transformers_vs_open_clip_max_abs"] = f"{err:.3e}"
    write_expected(name, pixels, ids, image, text, meta)
    print(f"{name}: image {tuple(image.shape)} text {tuple(text.shape)}")


def make_vit_b_32(root: Path) -> None:
    for name in ("ViT-B-32", "ViT-B-32-quickgelu"):
        torch.manual_seed(0)
        model = open_clip.create_model(name, pretrained=None).eval()
        perturb(model, 1)
        state = open_clip_state(model, torch.float16)
        reload_rounded(model, state)
        out = root / name
        out.mkdir(parents=True, exist_ok=True)
        cfg = open_clip.get_model_config(name)
        (out / "open_clip_config.json").write_text(json.dumps(hub_config(cfg), indent=2) + "\n")
        save_file(state, str(out / "open_clip_model.safetensors"))
        g = torch.Generator().manual_seed(2)
        pixels = torch.randn(2, 3, 224, 224, generator=g)
        ids = open_clip.tokenize(PROMPTS)
        image, text = features(model, pixels, ids)
        save_file(
            {"pixel_values": pixels, "input_ids": ids.to(torch.int64), "image_features": image,
             "text_features": text},
            str(out / "expected.safetensors"),
            {"open_clip": open_clip.__version__, "prompts": json.dumps(PROMPTS)},
        )
        print(f"{out}: written")


def main() -> None:
    torch.set_num_threads(1)
    parser = argparse.ArgumentParser()
    parser.add_argument("--vit-b-32", type=Path, help="write real-size ViT-B-32 models here instead")
    args = parser.parse_args()
    if args.vit_b_32:
        make_vit_b_32(args.vit_b_32)
        return
    make_tiny("oc-tiny-quickgelu", True, torch.float16, 49408, 11, bare_config=False)
    make_tiny("oc-tiny-gelu", False, torch.float32, 1000, 21, bare_config=True)


if __name__ == "__main__":
    main()
