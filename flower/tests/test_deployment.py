"""A real Flower deployment on loopback: one flower-superlink and one flower-supernode per
silo, each silo owning one domain folder of the bundled data (copied into its own folder)
and its own feature cache, named by its node config; apps started with `flwr run`. Each run
must leave the run directory `fedclip run` leaves for the same options on the whole
dataset: metrics.csv byte for byte, the adapters byte for byte, summary.json equal apart
from its timings. Every process started here is stopped by its PID; everything is
time-bounded; no address but 127.0.0.1."""

from __future__ import annotations

import json
import os
import pathlib
import re
import shutil
import signal
import socket
import subprocess
import sys
import time

import pytest

import fedclip

FLOWER = pathlib.Path(__file__).resolve().parents[1]
REPO = FLOWER.parent
MODEL = REPO / "weights" / "tiny-clip"
DATA = REPO / "data" / "pacs-mini"
BIN = pathlib.Path(sys.executable).parent
RUN_TIMEOUT_S = 300
TIMINGS = ("seconds_extracting", "seconds_training")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Deployment:
    """The SuperLink, the SuperNodes and the environment `flwr` runs in."""

    def __init__(self, root: pathlib.Path):
        self.root = root
        self.processes: list = []
        self.home = root / "flwr-home"
        self.home.mkdir()
        self.env = {**os.environ, "FLWR_HOME": str(self.home),
                    "PATH": f"{BIN}:{os.environ['PATH']}"}
        self.silos = sorted(p.name for p in DATA.iterdir() if p.is_dir())

    def start(self, log: str, *cmd: str) -> None:
        p = subprocess.Popen([str(BIN / cmd[0]), *cmd[1:]], stdout=open(self.root / log, "w"),
                             stderr=subprocess.STDOUT, env=self.env, start_new_session=True)
        self.processes.append(p)

    def up(self) -> None:
        link = free_port()
        (self.home / "config.toml").write_text(
            f'[superlink]\ndefault = "local"\n\n[superlink.local]\n'
            f'address = "127.0.0.1:{link}"\ninsecure = true\n')
        self.start("superlink.log", "flower-superlink", "--insecure", "--host", "127.0.0.1",
                   "--port", str(link), "--disable-runtime-dependency-installation")
        for domain in self.silos:
            silo = self.root / "silos" / domain
            shutil.copytree(DATA / domain, silo / domain)
            node_config = (f'data="{silo}" cache-dir="{self.root / "caches" / domain}" '
                           'device="cpu"')
            self.start(f"supernode-{domain}.log", "flower-supernode", "--insecure",
                       "--superlink", f"127.0.0.1:{link}", "--port", str(free_port()),
                       "--node-config", node_config)

    def down(self) -> None:
        for p in self.processes:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGTERM)
        for p in self.processes:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait(timeout=10)

    def run(self, out: pathlib.Path, **options) -> None:
        """`flwr run` with these run-config options; waits for `out/summary.json`."""
        values = {"model": str(MODEL), "out": str(out), "num-nodes": len(self.silos),
                  **options}
        run_config = " ".join(f"{k}={json.dumps(v)}" for k, v in values.items())
        deadline = time.monotonic() + RUN_TIMEOUT_S
        while True:
            run = subprocess.run([str(BIN / "flwr"), "run", str(FLOWER), "local",
                                  "--run-config", run_config], capture_output=True, text=True,
                                 env=self.env, timeout=60)
            if run.returncode == 0 or time.monotonic() > deadline - 200:
                break
            time.sleep(1)  # the SuperLink may not listen yet
        assert run.returncode == 0, run.stdout + run.stderr
        run_id = re.search(r"run (\d+)", run.stdout + run.stderr)
        assert run_id, run.stdout + run.stderr
        checked = time.monotonic()
        while not (out / "summary.json").exists():
            for p in self.processes:
                assert p.poll() is None, f"{p.args[0]} exited with {p.returncode}"
            assert time.monotonic() < deadline, f"no result in time; logs in {self.root}"
            if time.monotonic() - checked > 30:  # the ServerApp's log shows a failure
                log = self.server_log(run_id.group(1))
                assert "Traceback" not in log, log
                checked = time.monotonic()
            time.sleep(0.5)
        time.sleep(0.5)

    def server_log(self, run_id: str) -> str:
        shown = subprocess.run([str(BIN / "flwr"), "log", run_id, "local", "--show"],
                               capture_output=True, text=True, env=self.env, timeout=60)
        return shown.stdout + shown.stderr


@pytest.fixture(scope="module")
def deployment(tmp_path_factory):
    if shutil.which("flower-superlink", path=str(BIN)) is None:
        pytest.fail("flwr is not installed in this venv")
    d = Deployment(tmp_path_factory.mktemp("flower"))
    d.up()
    yield d
    d.down()


def reference(tmp: pathlib.Path, **options) -> pathlib.Path:
    out = tmp / "ref"
    fedclip.run(data=DATA, model=MODEL, cache_dir=tmp / "ref-cache", out=out, device="cpu",
                **options)
    return out


def summary(run: pathlib.Path, drop=TIMINGS) -> dict:
    s = json.loads((run / "summary.json").read_text())
    return {k: v for k, v in s.items() if k not in drop}


def assert_same_run(got: pathlib.Path, want: pathlib.Path, drop=TIMINGS) -> None:
    assert (got / "metrics.csv").read_text() == (want / "metrics.csv").read_text()
    assert summary(got, drop) == summary(want, drop)
    for name in ("adapter-last.safetensors", "adapter-best.safetensors"):
        assert (got / name).exists() == (want / name).exists(), name
        if (want / name).exists():
            assert (got / name).read_bytes() == (want / name).read_bytes(), name
    assert (got / "accuracy.svg").exists() and (got / "config.json").exists()


def test_flower_run_directory_equals_fedclip_run(deployment, tmp_path):
    # The first run on fresh silo caches: every image is extracted once, as by fedclip run.
    options = dict(rounds=2, batch=16, lr=1e-3, seed=1)
    want = reference(tmp_path, **options)
    deployment.run(tmp_path / "flower", **options)
    assert_same_run(tmp_path / "flower", want)
    assert summary(want)["images_extracted"] > 500


# Later runs find the silos' caches filled, so the image counts differ from a fresh run's.
COUNTS = TIMINGS + ("images_extracted", "images_from_cache")


def test_flower_server_optimiser_kept_state_and_sampling(deployment, tmp_path):
    options = dict(rounds=2, batch=16, lr=1e-3, seed=2, sample_fraction=0.67,
                   keep_optimizer_state=True, aggregate="weighted", server_opt="fedadam")
    want = reference(tmp_path, **options)
    deployment.run(tmp_path / "flower", **{k.replace("_", "-"): v for k, v in options.items()},
                   **{"test-domain": "art_painting"})
    assert_same_run(tmp_path / "flower", want, COUNTS)


@pytest.mark.parametrize("method, rounds", [
    ("local", 2), ("zeroshot", 1), ("fedprox", 1), ("linear-probe", 2), ("clip-adapter", 1),
    ("tip-adapter", 1), ("tip-adapter-f", 2)])
def test_flower_other_methods(deployment, tmp_path, method, rounds):
    options = dict(rounds=rounds, batch=16, lr=1e-3, seed=3, method=method)
    want = reference(tmp_path, **options)
    deployment.run(tmp_path / "flower", **options, **{"test-domain": "art_painting"})
    assert_same_run(tmp_path / "flower", want, COUNTS)


def test_flower_finetune_local_steps(deployment, tmp_path):
    # Each silo fine-tunes its client from the final global parameters and scores it.
    options = dict(rounds=1, batch=16, lr=1e-3, seed=4, method="clip-adapter",
                   finetune_local_steps=3)
    want = reference(tmp_path, **options)
    assert summary(want)["finetuned_test_accuracy"]
    deployment.run(tmp_path / "flower", **{k.replace("_", "-"): v for k, v in options.items()},
                   **{"test-domain": "art_painting"})
    assert_same_run(tmp_path / "flower", want, COUNTS)


def test_flower_resumes_an_interrupted_run(deployment, tmp_path):
    # The run directory is fedclip run's, so an interrupted CLI run stands in for any: this
    # one aborts after round 2's metrics rows are written and before its checkpoint, as a
    # kill -9 there would. Flower resumes it from round 1's checkpoint, with fedadam's moments.
    options = dict(rounds=3, batch=16, lr=1e-3, seed=5, server_opt="fedadam")
    want = reference(tmp_path, **options)
    out = tmp_path / "flower"
    script = ("import fedclip, sys; fedclip.run(data=sys.argv[1], model=sys.argv[2], "
              "cache_dir=sys.argv[3], out=sys.argv[4], device='cpu', rounds=3, batch=16, "
              "lr=1e-3, seed=5, server_opt='fedadam')")
    crashed = subprocess.run([sys.executable, "-c", script, str(DATA), str(MODEL),
                              str(tmp_path / "crash-cache"), str(out)],
                             env={**os.environ, "FEDCLIP_ABORT_AT": "1:metrics"},
                             capture_output=True, text=True, timeout=RUN_TIMEOUT_S)
    assert crashed.returncode != 0 and "aborting after round 1's metrics" in crashed.stderr
    # Round 1's rows are kept, not recomputed: mark one (same value, one more digit).
    lines = (out / "metrics.csv").read_text().splitlines(keepends=True)
    at = lines[0].split(",").index("accuracy")
    i = next(j for j, line in enumerate(lines) if line.startswith("1,"))
    fields = lines[i].split(",")
    fields[at] += "0"
    original, lines[i] = lines[i], ",".join(fields)
    (out / "metrics.csv").write_text("".join(lines))
    flags = {k.replace("_", "-"): v for k, v in options.items()}
    deployment.run(out, **flags, **{"test-domain": "art_painting", "data": str(DATA),
                                    "resume": True})
    resumed = (out / "metrics.csv").read_text()
    assert lines[i] in resumed
    (out / "metrics.csv").write_text(resumed.replace(lines[i], original))
    assert_same_run(out, want, COUNTS)


def test_flower_skip_bad_leaves_out_what_fedclip_run_does(deployment, tmp_path):
    # A corrupt image in one silo (and in the whole dataset the reference reads): left out by
    # both, listed in summary.json; the splits of everything else unchanged.
    bad = "photo/dog/zz-corrupt.jpg"
    data = tmp_path / "data"
    shutil.copytree(DATA, data)
    (data / bad).write_bytes(b"\xff\xd8\xff\xe0 not a jpeg")
    silo_file = deployment.root / "silos" / "photo" / bad
    silo_file.write_bytes((data / bad).read_bytes())
    try:
        options = dict(rounds=1, batch=16, lr=1e-3, seed=6, skip_bad=True)
        out = tmp_path / "ref"
        fedclip.run(data=data, model=MODEL, cache_dir=tmp_path / "ref-cache", out=out,
                    device="cpu", **options)
        assert summary(out)["skipped_images"] == [bad]
        deployment.run(tmp_path / "flower", **{k.replace("_", "-"): v
                                                for k, v in options.items()},
                       **{"test-domain": "art_painting"})
        assert_same_run(tmp_path / "flower", out, COUNTS)
    finally:
        silo_file.unlink()


def test_flower_clients_per_domain(deployment, tmp_path):
    # Each silo partitions its domain into Dirichlet clients keyed by the domain's place
    # among every silo's, so the clients are fedclip run's; sampled, and weighted by size.
    options = dict(rounds=2, batch=8, lr=1e-3, seed=7, clients_per_domain=2,
                   sample_fraction=0.5, aggregate="weighted")
    want = reference(tmp_path, **options)
    assert "photo#1" in (want / "metrics.csv").read_text()
    deployment.run(tmp_path / "flower", **{k.replace("_", "-"): v for k, v in options.items()},
                   **{"test-domain": "art_painting"})
    assert_same_run(tmp_path / "flower", want, COUNTS)
