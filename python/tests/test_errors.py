"""Bad input raises ValueError / OSError with the message the CLI prints."""

from __future__ import annotations

import pytest

import fedclip
from conftest import DATA, MODEL, cli_error, run_cli


def test_missing_model_is_oserror_with_the_cli_message(cli, tmp_path):
    prompts = tmp_path / "p.txt"
    prompts.write_text("a dog\n")
    want = cli_error(run_cli(cli, "embed", "--model", str(tmp_path / "nope"), "--device", "cpu",
                             "--texts", str(prompts), "--out", str(tmp_path / "o.safetensors")))
    with pytest.raises(OSError) as e:
        fedclip.Model(tmp_path / "nope", device="cpu")
    assert str(e.value) == want
    assert "does not exist" in want


def test_corrupt_image_is_valueerror_with_the_cli_message(cli, tmp_path):
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    want = cli_error(run_cli(cli, "embed", "--model", str(MODEL), "--device", "cpu",
                             "--images", str(bad), "--out", str(tmp_path / "o.safetensors")))
    with pytest.raises(ValueError) as e:
        fedclip.Model(MODEL, device="cpu").encode_images([bad])
    assert str(e.value) == want
    assert str(bad) in want


def test_missing_image_is_oserror_with_the_cli_message(cli, tmp_path):
    # The encoder gathers unusable images into one message; a missing one makes it OSError.
    missing = tmp_path / "nope.png"
    want = cli_error(run_cli(cli, "embed", "--model", str(MODEL), "--device", "cpu",
                             "--images", str(missing), "--out", str(tmp_path / "o.safetensors")))
    with pytest.raises(OSError) as e:
        fedclip.Model(MODEL, device="cpu").encode_images([missing])
    assert str(e.value) == want
    assert str(missing) in want
    store = fedclip.FeatureStore(tmp_path / "cache", fedclip.Model(MODEL, device="cpu"))
    with pytest.raises(OSError, match="nope.png"):
        store.image_features([missing])


def test_bad_run_option_is_valueerror_with_the_cli_message(cli, tmp_path):
    want = cli_error(run_cli(cli, "run", "--device", "cpu", "--lr=-1",
                             "--out", str(tmp_path / "cli")))
    with pytest.raises(ValueError) as e:
        fedclip.run(lr=-1, out=tmp_path / "py", device="cpu")
    assert str(e.value) == want == "--lr must be finite and positive, got -1"


def test_unknown_test_domain_has_the_cli_message(cli, tmp_path):
    want = cli_error(run_cli(cli, "run", "--device", "cpu", "--test-domain", "mars",
                             "--out", str(tmp_path / "cli")))
    with pytest.raises(ValueError) as e:
        fedclip.run(test_domains=["mars"], out=tmp_path / "py", device="cpu")
    assert str(e.value) == want
    assert "mars" in want


def test_existing_run_is_not_overwritten(tmp_path):
    options = dict(rounds=1, out=tmp_path / "a", cache_dir=tmp_path / "c", device="cpu")
    fedclip.run(**options)
    before = (tmp_path / "a" / "metrics.csv").read_bytes()
    with pytest.raises(ValueError, match="already holds a run; pass --resume"):
        fedclip.run(**options)
    assert (tmp_path / "a" / "metrics.csv").read_bytes() == before


def test_missing_data_has_the_cli_message(cli, tmp_path):
    want = cli_error(run_cli(cli, "run", "--device", "cpu", "--data", str(tmp_path / "nowhere"),
                             "--test-domain", "x", "--out", str(tmp_path / "cli")))
    # A missing path is an I/O error (NotFound) in the chain: OSError, as for a missing model.
    with pytest.raises(OSError) as e:
        fedclip.run(data=tmp_path / "nowhere", test_domains=["x"], out=tmp_path / "o",
                    device="cpu")
    assert str(e.value) == want and "nowhere" in want


@pytest.mark.parametrize("call", [
    lambda: fedclip.Model(MODEL, device="tpu"),
    lambda: fedclip.Model(MODEL, device="cpu").encode_images([], batch=0),
    lambda: fedclip.run(method="fedsgd", device="cpu"),
    lambda: fedclip.run(test_domains="photo", device="cpu"),
])
def test_bad_arguments_are_valueerror(call):
    with pytest.raises(ValueError):
        call()


def test_unusable_device_is_runtimeerror_with_the_cli_message(cli, tmp_path):
    prompts = tmp_path / "p.txt"
    prompts.write_text("a dog\n")
    result = run_cli(cli, "embed", "--model", str(MODEL), "--device", "cuda",
                     "--texts", str(prompts), "--out", str(tmp_path / "o.safetensors"))
    if result.returncode == 0:
        pytest.skip("a CUDA device is usable here")
    want = cli_error(result)
    with pytest.raises(RuntimeError) as e:
        fedclip.Model(MODEL, device="cuda")
    assert str(e.value) == want and want.startswith("--device cuda: ")
