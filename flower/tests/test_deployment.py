"""A real Flower deployment on loopback: one flower-superlink, one flower-supernode per
training client (its partition through its node config, its own feature cache), the app
started with `flwr run`. The final global adapter must equal `fedclip run`'s with the same
options. Every process started here is stopped by its PID; everything is time-bounded."""

from __future__ import annotations

import os
import pathlib
import shutil
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
from safetensors.numpy import load_file

import fedclip

FLOWER = pathlib.Path(__file__).resolve().parents[1]
REPO = FLOWER.parent
MODEL = REPO / "weights" / "tiny-clip"
DATA = REPO / "data" / "pacs-mini"
BIN = pathlib.Path(sys.executable).parent
NAMES = ["attention.0.weight", "attention.0.bias", "attention.2.weight", "attention.2.bias"]
DEADLINE_S = 240


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def flat(path: pathlib.Path) -> np.ndarray:
    t = load_file(str(path))
    return np.concatenate([t[n].reshape(-1) for n in NAMES])


@pytest.fixture
def processes():
    started: list = []
    yield started
    for p in started:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGTERM)
    for p in started:
        try:
            p.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait(timeout=10)


def start(processes, log: pathlib.Path, *cmd: str, env=None) -> subprocess.Popen:
    p = subprocess.Popen([str(BIN / cmd[0]), *cmd[1:]], stdout=open(log, "w"),
                         stderr=subprocess.STDOUT, env=env, start_new_session=True)
    processes.append(p)
    return p


def test_flower_deployment_equals_fedclip_run(tmp_path, processes):
    if shutil.which("flower-superlink", path=str(BIN)) is None:
        pytest.fail("flwr is not installed in this venv")
    options = dict(rounds=2, batch=16, lr=1e-3, seed=1)
    config = fedclip.run_config(data=DATA, model=MODEL, cache_dir=tmp_path / "ref-cache",
                                out=tmp_path / "ref", **options)
    fedclip.run(data=DATA, model=MODEL, cache_dir=tmp_path / "ref-cache", out=tmp_path / "ref",
                device="cpu", **options)
    k = len(fedclip.Splits(__import__("json").dumps(config)).training_clients())

    home = tmp_path / "flwr-home"
    home.mkdir()
    env = {**os.environ, "FLWR_HOME": str(home), "PATH": f"{BIN}:{os.environ['PATH']}"}
    link = free_port()
    (home / "config.toml").write_text(
        f'[superlink]\ndefault = "local"\n\n[superlink.local]\naddress = "127.0.0.1:{link}"\n'
        "insecure = true\n")
    start(processes, tmp_path / "superlink.log", "flower-superlink", "--insecure",
          "--host", "127.0.0.1", "--port", str(link),
          "--disable-runtime-dependency-installation", env=env)
    for slot in range(k):
        node_config = f'partition-id={slot} cache-dir="{tmp_path / f"cache-{slot}"}"'
        start(processes, tmp_path / f"supernode-{slot}.log", "flower-supernode", "--insecure",
              "--superlink", f"127.0.0.1:{link}", "--port", str(free_port()),
              "--node-config", node_config, env=env)
    out = tmp_path / "flower-run"
    run_config = (f'data="{DATA}" model="{MODEL}" out="{out}" rounds=2 batch=16 lr=0.001 '
                  f"seed=1 num-nodes={k}")
    deadline = time.monotonic() + DEADLINE_S
    while True:
        run = subprocess.run([str(BIN / "flwr"), "run", str(FLOWER), "local", "--run-config",
                              run_config], capture_output=True, text=True, env=env, timeout=60)
        if run.returncode == 0 or time.monotonic() > deadline - 200:
            break
        time.sleep(1)  # the SuperLink may not listen yet
    assert run.returncode == 0, run.stdout + run.stderr
    result = out / "adapter-last.safetensors"
    while not result.exists():
        for p in processes:
            assert p.poll() is None, f"{p.args[0]} exited with {p.returncode}"
        assert time.monotonic() < deadline, "no result in time; see the logs in " + str(tmp_path)
        time.sleep(1)
    time.sleep(0.5)
    got, want = flat(result), flat(tmp_path / "ref" / "adapter-last.safetensors")
    assert got.shape == want.shape
    error = np.max(np.abs(got - want)) / np.max(np.abs(want))
    assert error <= 1e-6, f"relative error {error:.3g}"
