"""Generate the reference fixtures that the Rust tests of fedclip compare against.

How to run (from the repository root, with the reference venv whose pins are in
tests/reference/requirements.txt):

    /work/refvenv/bin/python tests/reference/make_fixtures.py

or, with any venv built from the pins:

    python -m venv .refvenv && .refvenv/bin/pip install -r tests/reference/requirements.txt
    .refvenv/bin/python tests/reference/make_fixtures.py

CI does NOT run this script. Its outputs are committed; the Rust tests only read them.
The script is deterministic (fixed seeds, one CPU thread): running it twice gives
byte-identical files. No network access and no pretrained weights are needed; the
only external inputs are open_clip's bundled BPE file (bpe_simple_vocab_16e6.txt.gz,
MIT) and six PACS images, which are copied once from ../shared/data/pacs-mini (or
$PACS_MINI) into tests/fixtures/images/pacs/ and read from there afterwards.

What it writes (see tests/fixtures/README.md for the details):
  weights/tiny-clip/                      bundled random-weight default model (fp16) + tokenizer
  tests/fixtures/models/tiny-f32/         awkward-shape CLIPModel, float32
  tests/fixtures/models/tiny-f16/         same weights, float16
  tests/fixtures/models/tiny-gelu-sharded/ exact-GELU CLIPModel, bfloat16, several shards
  tests/fixtures/models/tiny-vision-only/ CLIPVisionModelWithProjection (tiny-f32 vision tower)
  tests/fixtures/models/tiny-vision-bare/ CLIPVisionModel (same tower; unprefixed keys)
  tests/fixtures/expected/<model>.safetensors   float32 reference activations
  tests/fixtures/tokenizer_cases.json     text -> ids cases from CLIPTokenizerFast
  tests/fixtures/images/pacs/*            the six real images
"""

from __future__ import annotations

import gzip
import json
import math
import os
import shutil
import sys
import tempfile
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save as save_bytes

import open_clip
import transformers
from open_clip.tokenizer import SimpleTokenizer, bytes_to_unicode
from PIL import Image
from torchvision import transforms as T
from transformers import (
    CLIPConfig,
    CLIPImageProcessor,
    CLIPModel,
    CLIPTokenizerFast,
    CLIPVisionConfig,
    CLIPVisionModel,
    CLIPVisionModelWithProjection,
)

transformers.logging.set_verbosity_error()
try:  # silence the "Writing model shards" / "Loading weights" progress bars
    transformers.utils.logging.disable_progress_bar()
except Exception:  # pragma: no cover
    pass

REPO = Path(__file__).resolve().parents[2]
FIXTURES = REPO / "tests" / "fixtures"
MODELS = FIXTURES / "models"
EXPECTED = FIXTURES / "expected"
IMAGES = FIXTURES / "images"
TINY_CLIP = REPO / "weights" / "tiny-clip"
PACS_SRC = Path(os.environ.get("PACS_MINI", REPO.parent / "shared" / "data" / "pacs-mini"))

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)

SOT, EOT = 49406, 49407

# (domain, class, file) -- sketch has only PNGs in PACS, so that one is a PNG.
REAL_IMAGES = [
    ("photo", "dog", "056_0001.jpg"),
    ("art_painting", "guitar", "pic_001.jpg"),
    ("cartoon", "house", "pic_001.jpg"),
    ("sketch", "dog", "5281.png"),
    ("photo", "house", "pic_001.jpg"),
    ("art_painting", "dog", "pic_001.jpg"),
]
REAL_TEXTS = ["a picture of a dog", "a picture of a guitar", "a picture of a house"]
# Prompts for the tiny-clip `input_ids` (the non-"real." part of its expected file).
TINY_CLIP_PROMPTS = [
    "a photo of a cat",
    "A DOG, running fast!!",
    "it's 3 o'clock at the café",
]

TOKENIZER_CASES = [
    "a picture of a dog",
    "a picture of a elephant",
    "a picture of a giraffe",
    "a picture of a guitar",
    "a picture of a horse",
    "a picture of a house",
    "a picture of a person",
    "A PICTURE OF A Dog",
    "Hello, world! (really?) -- yes; ok... #tag @user",
    "the 1st of 2024: 3.14159 and 1,000,000",
    "it's a dog's life, isn't it? we're here, they'll go, I'd've",
    "café naïve résumé",
    "日本の犬 and 中文",
    "   lots \t of \n  whitespace   ",
    "",
    "emoji 🐶🎸 and symbols <|> & ~",
    " ".join(
        ["a very long prompt describing a painting of a dog next to a house with a guitar"] * 6
    ),
]


# --------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------


def log(*a):
    print(*a, flush=True)


def sub_config(cfg, name: str) -> dict:
    c = getattr(cfg, name)
    return c.to_dict() if hasattr(c, "to_dict") else dict(c)


def randomize_(model: torch.nn.Module, seed: int) -> None:
    """Re-initialise every parameter with O(1)-scale noise.

    The default transformers init leaves LayerNorm weight=1 / bias=0, all biases 0 and
    tiny (0.02) embeddings, which hides bugs (a missing LN affine or bias would still
    pass). Here: Linear / Conv weights ~ N(0, 1/fan_in), biases ~ N(0, 0.2^2),
    LayerNorm weight ~ 1 + N(0, 0.25^2), LayerNorm bias ~ N(0, 0.2^2), token/position/
    class embeddings ~ N(0, 0.5^2), logit_scale ~ 2.6592 + N(0, 0.3^2).
    """
    g = torch.Generator().manual_seed(seed)

    def rn(t: torch.Tensor, std: float, mean: float = 0.0) -> torch.Tensor:
        return torch.randn(t.shape, generator=g, dtype=torch.float32) * std + mean

    with torch.no_grad():
        # named_modules order is deterministic (registration order).
        for mname, mod in model.named_modules():
            if isinstance(mod, torch.nn.LayerNorm):
                mod.weight.copy_(rn(mod.weight, 0.25, 1.0))
                mod.bias.copy_(rn(mod.bias, 0.2))
            elif isinstance(mod, (torch.nn.Linear, torch.nn.Conv2d)):
                fan_in = mod.weight[0].numel()
                mod.weight.copy_(rn(mod.weight, 1.0 / math.sqrt(fan_in)))
                if mod.bias is not None:
                    mod.bias.copy_(rn(mod.bias, 0.2))
            elif isinstance(mod, torch.nn.Embedding):
                mod.weight.copy_(rn(mod.weight, 0.5))
            for pname, p in mod.named_parameters(recurse=False):
                if pname == "class_embedding":
                    p.copy_(rn(p, 0.5))
                elif pname == "logit_scale":
                    p.copy_(rn(p, 0.3, 2.6592))


def clip_config(spec: dict) -> CLIPConfig:
    t, v, p = spec["text"], spec["vision"], spec["projection_dim"]
    # projection_dim is set at all three levels so that the sub-configs are self-consistent
    # (CLIPModel reads the top-level one; CLIPVisionModelWithProjection reads vision_config's).
    return CLIPConfig(
        text_config=dict(t, projection_dim=p),
        vision_config=dict(v, projection_dim=p),
        projection_dim=p,
    )


def save_json(path: Path, obj) -> None:
    path.write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def clean_dir(path: Path) -> None:
    if path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True)


def saved_keys(model_dir: Path) -> dict[str, list[str]]:
    """shard file -> tensor names (and dtypes) as stored on disk."""
    out = {}
    for f in sorted(model_dir.glob("*.safetensors")):
        with safe_open(str(f), "pt") as h:
            out[f.name] = sorted(h.keys())
    return out


def stored_dtypes(model_dir: Path) -> set[str]:
    dts = set()
    for f in sorted(model_dir.glob("*.safetensors")):
        with safe_open(str(f), "pt") as h:
            for k in h.keys():
                dts.add(str(h.get_slice(k).get_dtype()))
    return dts


def pooling_rule(text_cfg) -> str:
    eos = text_cfg.eos_token_id
    if eos == 2:
        return "argmax(input_ids) (legacy eos_token_id == 2)"
    return f"first position where input_ids == eos_token_id ({eos})"


# --------------------------------------------------------------------------------------
# 1. tokenizer
# --------------------------------------------------------------------------------------


def build_tokenizer() -> CLIPTokenizerFast:
    bpe_path = Path(open_clip.__file__).parent / "bpe_simple_vocab_16e6.txt.gz"
    lines = gzip.open(bpe_path).read().decode("utf-8").split("\n")
    merges = lines[1 : 49152 - 256 - 2 + 1]  # exactly what SimpleTokenizer keeps: 48894 merges
    assert len(merges) == 48894, len(merges)
    vocab = list(bytes_to_unicode().values())
    vocab = vocab + [v + "</w>" for v in vocab]
    vocab += ["".join(m.split()) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    assert len(vocab) == 49408 and len(set(vocab)) == 49408
    encoder = {tok: i for i, tok in enumerate(vocab)}
    assert encoder["<|startoftext|>"] == SOT and encoder["<|endoftext|>"] == EOT

    with tempfile.TemporaryDirectory() as td:
        src, out = Path(td) / "src", Path(td) / "out"
        src.mkdir()
        (src / "vocab.json").write_text(json.dumps(encoder, ensure_ascii=False), encoding="utf-8")
        (src / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
        # NB transformers 5: CLIPTokenizerFast is an alias of the tokenizers-backed CLIPTokenizer,
        # whose __init__ takes vocab=/merges= and SILENTLY IGNORES vocab_file=/merges_file=
        # (you get a 2-token vocab). from_pretrained on a directory does the file loading and the
        # conversion properly.
        tok = CLIPTokenizerFast.from_pretrained(str(src), model_max_length=77)
        assert len(tok) == 49408, len(tok)
        tok.save_pretrained(str(out))
        saved = sorted(p.name for p in out.iterdir())
        log("tokenizer save_pretrained wrote:", saved)

        TINY_CLIP.mkdir(parents=True, exist_ok=True)
        # Re-serialise tokenizer.json compactly (pretty=False): same content, 1.7 MB instead of 3.6 MB.
        from tokenizers import Tokenizer

        Tokenizer.from_file(str(out / "tokenizer.json")).save(str(TINY_CLIP / "tokenizer.json"), pretty=False)
        cfg = json.loads((out / "tokenizer_config.json").read_text(encoding="utf-8"))
        for k in ("is_local", "local_files_only", "name_or_path"):
            cfg.pop(k, None)
        save_json(TINY_CLIP / "tokenizer_config.json", cfg)
        if (out / "special_tokens_map.json").exists():
            shutil.copy(out / "special_tokens_map.json", TINY_CLIP / "special_tokens_map.json")

    # Reload from the committed files and check against open_clip's reference tokenizer.
    tok = CLIPTokenizerFast.from_pretrained(str(TINY_CLIP))
    st = SimpleTokenizer()
    for text in TOKENIZER_CASES + REAL_TEXTS + TINY_CLIP_PROMPTS:
        hf = tok(text)["input_ids"]
        oc = [SOT] + st.encode(text) + [EOT]
        assert hf == oc, (text, hf, oc)
        if len(oc) <= 77:
            padded = open_clip.tokenize([text])[0].tolist()  # zero-padded to 77
            assert padded[: len(oc)] == oc and all(x == 0 for x in padded[len(oc) :])
    log(f"tokenizer: {len(tok)} tokens, ids match open_clip SimpleTokenizer on "
        f"{len(TOKENIZER_CASES + REAL_TEXTS + TINY_CLIP_PROMPTS)} prompts")
    return tok


def write_tokenizer_cases(tok) -> None:
    cases = []
    for text in TOKENIZER_CASES:
        ids = tok(text, truncation=False)["input_ids"]
        cases.append({"text": text, "ids": ids})
    assert any(len(c["ids"]) > 77 for c in cases)
    path = FIXTURES / "tokenizer_cases.json"
    # one case per line: readable but compact
    body = ",\n".join("  " + json.dumps(c, ensure_ascii=False) for c in cases)
    path.write_text("[\n" + body + "\n]\n", encoding="utf-8")
    log(f"wrote {path.relative_to(REPO)} ({len(cases)} cases)")


# --------------------------------------------------------------------------------------
# 2. models
# --------------------------------------------------------------------------------------

TINY_TEXT = dict(
    vocab_size=1000,
    max_position_embeddings=20,
    hidden_size=24,
    num_attention_heads=3,
    num_hidden_layers=2,
    intermediate_size=56,
    hidden_act="quick_gelu",
    layer_norm_eps=1e-5,
    bos_token_id=998,
    eos_token_id=999,
    pad_token_id=1,
)
TINY_VISION = dict(
    image_size=30,
    patch_size=7,
    num_channels=3,
    hidden_size=40,
    num_attention_heads=4,
    num_hidden_layers=2,
    intermediate_size=72,
    hidden_act="quick_gelu",
    layer_norm_eps=1e-5,
)

SPECS = {
    "tiny-clip": dict(
        seed=1000,
        save_dtype=torch.float16,
        projection_dim=32,
        text=dict(
            vocab_size=49408,
            max_position_embeddings=77,
            hidden_size=32,
            num_attention_heads=4,
            num_hidden_layers=2,
            intermediate_size=128,
            hidden_act="quick_gelu",
            layer_norm_eps=1e-5,
            bos_token_id=SOT,
            eos_token_id=EOT,
            pad_token_id=1,
        ),
        vision=dict(
            image_size=224,
            patch_size=32,
            num_channels=3,
            hidden_size=64,
            num_attention_heads=4,
            num_hidden_layers=2,
            intermediate_size=256,
            hidden_act="quick_gelu",
            layer_norm_eps=1e-5,
        ),
    ),
    "tiny-f32": dict(seed=2000, save_dtype=torch.float32, projection_dim=24, text=TINY_TEXT, vision=TINY_VISION),
    # same seed => same weights as tiny-f32, rounded to fp16
    "tiny-f16": dict(seed=2000, save_dtype=torch.float16, projection_dim=24, text=TINY_TEXT, vision=TINY_VISION),
    "tiny-gelu-sharded": dict(
        seed=3000,
        save_dtype=torch.bfloat16,
        max_shard_size="64KB",
        projection_dim=24,
        text=dict(TINY_TEXT, hidden_act="gelu", layer_norm_eps=1e-6),
        vision=dict(TINY_VISION, hidden_act="gelu", layer_norm_eps=1e-6),
    ),
}

PREPROCESSOR_CONFIG = {
    "crop_size": {"height": 224, "width": 224},
    "do_center_crop": True,
    "do_convert_rgb": True,
    "do_normalize": True,
    "do_rescale": True,
    "do_resize": True,
    "image_mean": list(OPENAI_MEAN),
    "image_processor_type": "CLIPImageProcessor",
    "image_std": list(OPENAI_STD),
    "resample": 3,
    "rescale_factor": 0.00392156862745098,
    "size": {"shortest_edge": 224},
}

TINY_CLIP_README = """\
# tiny-clip: RANDOM weights

These are **random weights**, not a trained CLIP. They are generated by
`tests/reference/make_fixtures.py` (seeded, deterministic) and exist only so that the test
suite and the offline default of the CLI have a model with the real CLIP interfaces:

* real preprocessing shape: 224x224 input, patch 32 -> 7x7 patches + class token = 50 tokens;
  `preprocessor_config.json` carries the OpenAI CLIP mean/std, bicubic (resample 3) resize of the
  shortest edge to 224 and a 224 center crop;
* real tokenizer: `tokenizer.json` is the OpenAI CLIP BPE (49408 tokens) rebuilt from open_clip's
  MIT-licensed `bpe_simple_vocab_16e6.txt.gz`; 77 text positions;
* tiny widths: vision 64 wide / 2 layers / 4 heads / MLP 256, text 32 wide / 2 layers / 4 heads /
  MLP 128, projection 32, quick_gelu; stored as float16 (`model.safetensors`).

Its zero-shot predictions are meaningless. Use real CLIP weights for any actual measurement.
Reference outputs for this model are in `tests/fixtures/expected/tiny-clip.safetensors`.
"""

MODEL_README = {}


def build_and_save(name: str, spec: dict, out_dir: Path) -> dict:
    torch.manual_seed(spec["seed"])
    cfg = clip_config(spec)
    model = CLIPModel(cfg).eval()
    randomize_(model, spec["seed"])
    model = model.to(spec["save_dtype"])
    kwargs = {}
    if "max_shard_size" in spec:
        kwargs["max_shard_size"] = spec["max_shard_size"]
    model.save_pretrained(str(out_dir), **kwargs)
    info = {
        "class": "CLIPModel",
        "files": sorted(p.name for p in out_dir.iterdir()),
        "stored_dtypes": sorted(stored_dtypes(out_dir)),
        "keys": saved_keys(out_dir),
    }
    return info


def build_vision_only(src_dir: Path, out_dir: Path, bare: bool = False) -> dict:
    """tiny-f32's vision tower as a CLIPVisionModelWithProjection (with visual_projection), or,
    with bare=True, as a plain CLIPVisionModel (transformers 5 saves that one WITHOUT the
    `vision_model.` prefix)."""
    full = CLIPModel.from_pretrained(str(src_dir)).eval()
    vcfg = CLIPVisionConfig(**dict(TINY_VISION, projection_dim=full.config.projection_dim))
    if bare:
        vm = CLIPVisionModel(vcfg).eval()
        sd = {k[len("vision_model."):]: v for k, v in full.state_dict().items() if k.startswith("vision_model.")}
    else:
        vm = CLIPVisionModelWithProjection(vcfg).eval()
        sd = {k: v for k, v in full.state_dict().items() if k.startswith(("vision_model.", "visual_projection."))}
    missing, unexpected = vm.load_state_dict(sd, strict=True)
    assert not missing and not unexpected
    vm.save_pretrained(str(out_dir))
    return {
        "class": type(vm).__name__,
        "files": sorted(p.name for p in out_dir.iterdir()),
        "stored_dtypes": sorted(stored_dtypes(out_dir)),
        "keys": saved_keys(out_dir),
    }


# --------------------------------------------------------------------------------------
# 3. expected outputs
# --------------------------------------------------------------------------------------


def make_tiny_input_ids(vocab_bos: int, eos: int, length: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab_bos, (3, length), generator=g, dtype=torch.int64)
    ids[:, 0] = vocab_bos
    for row, pos in enumerate([5, 11, length - 1]):
        ids[row, pos] = eos
    return ids


def openai_transform() -> T.Compose:
    # OpenAI CLIP's clip._transform(224), verbatim in structure.
    return T.Compose(
        [
            T.Resize(224, interpolation=T.InterpolationMode.BICUBIC),
            T.CenterCrop(224),
            lambda im: im.convert("RGB"),
            T.ToTensor(),
            T.Normalize(OPENAI_MEAN, OPENAI_STD),
        ]
    )


def copy_real_images() -> list[str]:
    dst_dir = IMAGES / "pacs"
    dst_dir.mkdir(parents=True, exist_ok=True)
    rels = []
    for domain, cls, fname in REAL_IMAGES:
        dst = dst_dir / f"{domain}_{cls}_{fname}"
        src = PACS_SRC / domain / cls / fname
        if src.exists():
            shutil.copyfile(src, dst)
        elif not dst.exists():
            sys.exit(f"missing {src} and no committed copy at {dst}; set PACS_MINI")
        rels.append(dst.relative_to(IMAGES).as_posix())
    return rels


@torch.no_grad()
def run_reference(model, pixel_values=None, input_ids=None, prefix="") -> dict[str, torch.Tensor]:
    """Everything computed in float32, eager attention, no attention_mask (CLIP-style causal only)."""
    out: dict[str, torch.Tensor] = {}
    if pixel_values is not None:
        vm = getattr(model, "vision_model", model)  # bare CLIPVisionModel is the tower itself
        vo = vm(pixel_values=pixel_values, output_hidden_states=True, return_dict=True)
        hs = vo.hidden_states
        n = model.config.num_hidden_layers if not hasattr(model.config, "vision_config") else model.config.vision_config.num_hidden_layers
        assert len(hs) == n + 1, (len(hs), n)
        # semantics checks (documented in tests/fixtures/README.md)
        emb = vm.embeddings(pixel_values)
        torch.testing.assert_close(hs[0], vm.pre_layrnorm(emb), rtol=0, atol=0)
        torch.testing.assert_close(hs[-1], vo.last_hidden_state, rtol=0, atol=0)
        torch.testing.assert_close(vo.pooler_output, vm.post_layernorm(hs[-1][:, 0, :]), rtol=0, atol=0)
        for i, h in enumerate(hs):
            out[f"{prefix}vision.hidden_states.{i}"] = h
        out[f"{prefix}vision.pooled"] = vo.pooler_output
        if hasattr(model, "visual_projection"):
            out[f"{prefix}image_embeds"] = model.visual_projection(vo.pooler_output)
    if input_ids is not None:
        tm = model.text_model
        to = tm(input_ids=input_ids, output_hidden_states=True, return_dict=True)
        hs = to.hidden_states
        assert len(hs) == model.config.text_config.num_hidden_layers + 1
        torch.testing.assert_close(to.last_hidden_state, tm.final_layer_norm(hs[-1]), rtol=0, atol=0)
        # pooling: both HF rules coincide for all fixture inputs (eos is the largest id and the
        # first maximum is the first eos); assert it so the fixture does not depend on the rule.
        first_eos = (input_ids == model.config.text_config.eos_token_id).int().argmax(-1)
        assert torch.equal(first_eos, input_ids.argmax(-1))
        torch.testing.assert_close(
            to.pooler_output, to.last_hidden_state[torch.arange(input_ids.shape[0]), first_eos], rtol=0, atol=0
        )
        for i, h in enumerate(hs):
            out[f"{prefix}text.hidden_states.{i}"] = h
        out[f"{prefix}text.last_hidden_state"] = to.last_hidden_state
        out[f"{prefix}text.pooled"] = to.pooler_output
        out[f"{prefix}text_embeds"] = model.text_projection(to.pooler_output)
    return out


@torch.no_grad()
def cross_check_full_forward(model, pixel_values, input_ids, ref: dict, prefix="") -> None:
    """Compare with CLIPModel.forward / get_*_features (normalised embeddings) and with SDPA."""
    o = model(input_ids=input_ids, pixel_values=pixel_values, return_dict=True)
    ie, te = ref[f"{prefix}image_embeds"], ref[f"{prefix}text_embeds"]
    torch.testing.assert_close(o.image_embeds, ie / ie.norm(dim=-1, keepdim=True), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(o.text_embeds, te / te.norm(dim=-1, keepdim=True), rtol=1e-5, atol=1e-6)
    gi = model.get_image_features(pixel_values=pixel_values)
    gi = gi.pooler_output if hasattr(gi, "pooler_output") else gi
    torch.testing.assert_close(gi, ie, rtol=1e-5, atol=1e-6)


def tensor_stats(d: dict[str, torch.Tensor], keys) -> str:
    parts = []
    for k in keys:
        t = d[k]
        parts.append(f"{k}: std={t.float().std().item():.3f} max|x|={t.float().abs().max().item():.3f}")
    return "; ".join(parts)


def save_deterministic(tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str]) -> None:
    """safetensors.torch.save_file, but with a byte-stable header.

    The safetensors library serialises `__metadata__` from a hash map, so its key order (and thus
    the file's bytes) changes from run to run. Re-emit the header with sorted metadata keys and
    tensor entries in data-offset order; the data section is untouched."""
    blob = save_bytes(tensors, metadata=metadata)
    n = int.from_bytes(blob[:8], "little")
    header = json.loads(blob[8 : 8 + n])
    data = blob[8 + n :]
    meta = header.pop("__metadata__", {})
    ordered = {"__metadata__": {k: meta[k] for k in sorted(meta)}}
    for k in sorted(header, key=lambda k: (header[k]["data_offsets"][0], k)):
        ordered[k] = header[k]
    hb = json.dumps(ordered, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    hb += b" " * (-len(hb) % 8)  # same 8-byte alignment padding as the library
    path.write_bytes(len(hb).to_bytes(8, "little") + hb + data)
    # round-trip check
    with safe_open(str(path), "pt") as h:
        assert h.metadata() == meta and sorted(h.keys()) == sorted(tensors)
        for k in tensors:
            assert torch.equal(h.get_tensor(k), tensors[k]), k


def write_expected(name: str, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> None:
    EXPECTED.mkdir(parents=True, exist_ok=True)
    clean = {}
    for k, v in tensors.items():
        v = v.detach().contiguous()
        clean[k] = v.to(torch.int64) if k.endswith("input_ids") else v.to(torch.float32)
    path = EXPECTED / f"{name}.safetensors"
    save_deterministic(clean, path, metadata)
    log(f"wrote {path.relative_to(REPO)} ({len(clean)} tensors, {path.stat().st_size} bytes)")


def short_config(model_dir: Path) -> str:
    cfg = json.loads((model_dir / "config.json").read_text())
    return json.dumps(cfg, separators=(",", ":"), sort_keys=True)


def load_f32(cls, model_dir: Path):
    model, info = cls.from_pretrained(str(model_dir), attn_implementation="eager", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    return model.float().eval()


def expected_for_clip(name: str, model_dir: Path, input_seed: int, tok=None) -> dict:
    model = load_f32(CLIPModel, model_dir)
    cfg = model.config
    S = cfg.vision_config.image_size
    g = torch.Generator().manual_seed(input_seed)
    pixel_values = torch.randn((3, 3, S, S), generator=g, dtype=torch.float32)
    if tok is None:
        L = cfg.text_config.max_position_embeddings
        input_ids = make_tiny_input_ids(cfg.text_config.bos_token_id, cfg.text_config.eos_token_id, L, input_seed + 1)
    else:
        input_ids = tok(TINY_CLIP_PROMPTS, padding="max_length", max_length=77, return_tensors="pt")["input_ids"]
    tensors = {"pixel_values": pixel_values, "input_ids": input_ids}
    ref = run_reference(model, pixel_values, input_ids)
    cross_check_full_forward(model, pixel_values, input_ids, ref)
    tensors.update(ref)
    tensors["logit_scale"] = model.logit_scale.detach().reshape(1)
    meta = {
        "model": name,
        "model_dir": model_dir.relative_to(REPO).as_posix(),
        "config": short_config(model_dir),
        "pooling": pooling_rule(cfg.text_config),
        "reference": f"transformers {transformers.__version__}, torch {torch.__version__}, float32, eager attention, no attention_mask",
    }
    if tok is not None:
        meta["texts"] = json.dumps(TINY_CLIP_PROMPTS, ensure_ascii=False)
        meta["pad_token_id"] = str(tok.pad_token_id)
        # real images + real prompts
        rels = copy_real_images()
        tf = openai_transform()
        imgs = [Image.open(IMAGES / r) for r in rels]
        real_pv = torch.stack([tf(im) for im in imgs])
        # informative: how far is HF's CLIPImageProcessor from the torchvision pipeline?
        proc = CLIPImageProcessor(**PREPROCESSOR_CONFIG)
        hf_pv = proc(images=[im.convert("RGB") for im in imgs], return_tensors="pt")["pixel_values"]
        meta["hf_image_processor_max_abs_diff"] = f"{(hf_pv - real_pv).abs().max().item():.6g}"
        log(f"  CLIPImageProcessor vs torchvision _transform: max|diff| = {meta['hf_image_processor_max_abs_diff']}")
        real_ids = tok(REAL_TEXTS, padding="max_length", max_length=77, return_tensors="pt")["input_ids"]
        real = run_reference(model, real_pv, real_ids, prefix="real.")
        cross_check_full_forward(model, real_pv, real_ids, real, prefix="real.")
        tensors["real.pixel_values"] = real_pv
        tensors["real.image_embeds"] = real["real.image_embeds"]
        tensors["real.input_ids"] = real_ids
        tensors["real.text_embeds"] = real["real.text_embeds"]
        meta["real_images"] = json.dumps(rels)
        meta["real_texts"] = json.dumps(REAL_TEXTS)
        meta["real_preprocess"] = (
            "torchvision Compose([Resize(224, BICUBIC), CenterCrop(224), convert('RGB'), ToTensor(), "
            f"Normalize({list(OPENAI_MEAN)}, {list(OPENAI_STD)})]) on PIL images"
        )
    log("  " + tensor_stats(tensors, ["vision.pooled", "image_embeds", "text.pooled", "text_embeds"]))
    write_expected(name, tensors, meta)
    return {"pooling": meta["pooling"], "tensors": tensors}


def expected_for_vision_only(name: str, model_dir: Path, input_seed: int, compare_with: dict, cls) -> None:
    model = load_f32(cls, model_dir)
    S = model.config.image_size
    g = torch.Generator().manual_seed(input_seed)
    pixel_values = torch.randn((3, 3, S, S), generator=g, dtype=torch.float32)
    ref = run_reference(model, pixel_values, None)
    with torch.no_grad():
        o = model(pixel_values=pixel_values, return_dict=True)
    if "image_embeds" in ref:
        torch.testing.assert_close(o.image_embeds, ref["image_embeds"], rtol=1e-5, atol=1e-6)
    else:
        torch.testing.assert_close(o.pooler_output, ref["vision.pooled"], rtol=0, atol=0)
    tensors = {"pixel_values": pixel_values, **ref}
    for k, v in tensors.items():  # must equal tiny-f32's vision outputs (same weights, same inputs)
        torch.testing.assert_close(v, compare_with[k], rtol=0, atol=0)
    meta = {
        "model": name,
        "model_dir": model_dir.relative_to(REPO).as_posix(),
        "config": short_config(model_dir),
        "reference": f"transformers {transformers.__version__}, torch {torch.__version__}, float32, eager attention",
    }
    write_expected(name, tensors, meta)


# --------------------------------------------------------------------------------------


def main() -> None:
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    log(f"transformers {transformers.__version__}, torch {torch.__version__}, open_clip {open_clip.__version__}")

    tok = build_tokenizer()
    write_tokenizer_cases(tok)

    report = {}
    # tiny-clip: bundled default model. Keep the tokenizer files written above.
    for p in TINY_CLIP.glob("*"):
        if p.name not in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
            p.unlink() if p.is_file() else shutil.rmtree(p)
    report["tiny-clip"] = build_and_save("tiny-clip", SPECS["tiny-clip"], TINY_CLIP)
    save_json(TINY_CLIP / "preprocessor_config.json", PREPROCESSOR_CONFIG)
    (TINY_CLIP / "README.md").write_text(TINY_CLIP_README, encoding="utf-8")

    for name in ("tiny-f32", "tiny-f16", "tiny-gelu-sharded"):
        d = MODELS / name
        clean_dir(d)
        report[name] = build_and_save(name, SPECS[name], d)
    clean_dir(MODELS / "tiny-vision-only")
    report["tiny-vision-only"] = build_vision_only(MODELS / "tiny-f32", MODELS / "tiny-vision-only")
    clean_dir(MODELS / "tiny-vision-bare")
    report["tiny-vision-bare"] = build_vision_only(MODELS / "tiny-f32", MODELS / "tiny-vision-bare", bare=True)

    for name, info in report.items():
        first = next(iter(info["keys"].values()))
        log(f"{name}: {info['class']} files={info['files']} dtypes={info['stored_dtypes']}")
        log(f"   first keys: {first[:4]} ... last: {first[-2:]}")

    # expected outputs
    seeds = {"tiny-clip": 11, "tiny-f32": 21, "tiny-f16": 21, "tiny-gelu-sharded": 31}
    results = {}
    results["tiny-clip"] = expected_for_clip("tiny-clip", TINY_CLIP, seeds["tiny-clip"], tok=tok)
    for name in ("tiny-f32", "tiny-f16", "tiny-gelu-sharded"):
        results[name] = expected_for_clip(name, MODELS / name, seeds[name])
    for name, cls in (("tiny-vision-only", CLIPVisionModelWithProjection), ("tiny-vision-bare", CLIPVisionModel)):
        expected_for_vision_only(name, MODELS / name, seeds["tiny-f32"], results["tiny-f32"]["tensors"], cls)

    f32, f16 = results["tiny-f32"]["tensors"], results["tiny-f16"]["tensors"]
    for k in ("image_embeds", "text_embeds"):
        log(f"tiny-f16 vs tiny-f32 {k}: max|diff| = {(f32[k] - f16[k]).abs().max().item():.4g}")
    for name, r in results.items():
        log(f"pooling {name}: {r['pooling']}")
    log("done")


if __name__ == "__main__":
    main()
