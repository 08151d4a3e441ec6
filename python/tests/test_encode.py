"""fedclip.Model against `fedclip embed`, and the feature cache against `fedclip run`'s."""

from __future__ import annotations

import numpy as np
import pytest
from safetensors.numpy import load_file

import fedclip
from conftest import DATA, MODEL, run_cli

PROMPTS = ["a picture of a dog", "a picture of a giraffe", "an elephant, drawn", "a house"]


@pytest.fixture(scope="module")
def model() -> fedclip.Model:
    return fedclip.Model(MODEL, device="cpu")


def embed(cli, tmp_path, *args):
    out = tmp_path / "embeds.safetensors"
    result = run_cli(cli, "embed", "--model", str(MODEL), "--device", "cpu",
                     "--out", str(out), *args)
    assert result.returncode == 0, result.stderr
    return load_file(str(out))


@pytest.mark.parametrize("batch", [5, 64])
def test_encode_images_equals_embed_bit_for_bit(cli, model, images, tmp_path, batch):
    want = embed(cli, tmp_path, "--batch", str(batch), "--images", *images)["image_embeds"]
    got = model.encode_images(images, batch=batch)
    assert got.dtype == np.float32 and got.shape == (len(images), model.dim)
    assert got.tobytes() == want.tobytes()


def test_encode_texts_equals_embed_bit_for_bit(cli, model, tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join(PROMPTS) + "\n")
    want = embed(cli, tmp_path, "--batch", "3", "--texts", str(prompts))["text_embeds"]
    got = model.encode_texts(PROMPTS, batch=3)
    assert got.shape == (len(PROMPTS), model.dim)
    assert got.tobytes() == want.tobytes()


def test_model_properties(model):
    assert model.dim == 32
    stored = load_file(str(MODEL / "model.safetensors"))["logit_scale"]
    assert model.logit_scale == float(stored.astype(np.float32).reshape(()))
    assert model.encode_images([]).shape == (0, 32)


def test_feature_store_reads_what_fedclip_run_cached(cli, model, tmp_path):
    cache = tmp_path / "cache"
    result = run_cli(cli, "run", "--rounds", "1", "--device", "cpu", "--method", "zeroshot",
                     "--cache-dir", str(cache), "--out", str(tmp_path / "run"))
    assert result.returncode == 0, result.stderr
    store = fedclip.FeatureStore(cache, model)
    files = sorted(str(p) for p in (DATA / "photo" / "dog").iterdir())
    feats, stats = store.image_features(files)
    assert (stats.hits, stats.computed) == (len(files), 0)
    # The run encoded these within other batches (whole domains, 64 at a time), and the CPU
    # engine's sums depend on the batch's rows, so equal to rounding, not bit for bit.
    np.testing.assert_allclose(feats, model.encode_images(files), rtol=1e-5, atol=1e-6)
    again, stats = store.image_features(files)
    assert (stats.hits, stats.computed) == (len(files), 0) and again.tobytes() == feats.tobytes()
    texts, tstats = store.text_features(["a picture of a dog", "a cat not in the run"])
    assert (tstats.hits, tstats.computed) == (1, 1)
    # The missing prompt was computed alone, so it equals encoding it alone bit for bit.
    assert texts[1].tobytes() == model.encode_texts(["a cat not in the run"])[0].tobytes()
    np.testing.assert_allclose(texts[0], model.encode_texts(["a picture of a dog"])[0],
                               rtol=1e-5, atol=1e-6)
