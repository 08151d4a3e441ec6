"""fedclip.sweep, fedclip.table and fedclip.run's on_round against the CLI."""

from __future__ import annotations

import csv
import json

import pytest

import fedclip
from conftest import DATA, MODEL, run_cli


def test_on_round_sees_each_rounds_metrics_rows(tmp_path):
    seen = []
    fedclip.run(data=DATA, model=MODEL, rounds=3, lr=5e-3, device="cpu",
                cache_dir=tmp_path / "cache", out=tmp_path / "run",
                on_round=lambda r, rows: seen.append((r, rows)))
    assert [r for r, _ in seen] == [1, 2, 3]
    lines = list(csv.DictReader((tmp_path / "run" / "metrics.csv").open()))
    for r, rows in seen:
        want = [row for row in lines if int(row["round"]) == r]
        assert len(rows) == len(want) == 10
        for got, line in zip(rows, want):
            assert (got["client"], got["split"]) == (line["client"], line["split"])
            assert f"{got['accuracy']:.6f}" == line["accuracy"]
            assert got["samples"] == int(line["samples"])


def test_an_exception_in_on_round_stops_the_run_and_resume_continues(tmp_path):
    class Stop(Exception):
        pass

    def stop_at_2(r, rows):
        if r == 2:
            raise Stop("enough")

    options = dict(data=DATA, model=MODEL, rounds=3, lr=5e-3, device="cpu",
                   cache_dir=tmp_path / "cache", out=tmp_path / "run")
    with pytest.raises(Stop, match="enough"):
        fedclip.run(on_round=stop_at_2, **options)
    assert not (tmp_path / "run" / "summary.json").exists()
    summary = fedclip.run(resume=True, **options)
    assert summary["rounds_run"] == 3


def test_sweep_and_table_equal_the_cli(cli, tmp_path):
    options = dict(rounds=2, lr=5e-3)
    done = fedclip.sweep(tmp_path / "py", methods=["fedclip", "zeroshot"],
                         test_domains=["photo", "sketch"], seeds=[0, 1], data=DATA, model=MODEL,
                         device="cpu", **options)
    assert len(done["ran"]) == 8 and done["images_extracted"] == 560
    result = run_cli(cli, "sweep", "--data", str(DATA), "--model", str(MODEL), "--device", "cpu",
                     "--methods", "fedclip,zeroshot", "--test-domains", "photo,sketch",
                     "--seeds", "0,1", "--rounds", "2", "--lr", "5e-3", "--out",
                     str(tmp_path / "cli"))
    assert result.returncode == 0, result.stderr
    for name in ["table.md", "table.tex", "table.csv", "table.svg",
                 "fedclip-photo-seed1/metrics.csv", "zeroshot-sketch-seed0/metrics.csv"]:
        assert (tmp_path / "py" / name).read_bytes() == (tmp_path / "cli" / name).read_bytes(), name
    rows = fedclip.table(tmp_path / "py")
    with (tmp_path / "cli" / "table.csv").open() as f:
        want = list(csv.DictReader(f))
    assert len(rows) == len(want) == 16
    for got, line in zip(rows, want):
        assert got["value"] == float(line["value"])
        assert {k: str(v) for k, v in got.items() if k != "value"} == \
            {k: v for k, v in line.items() if k != "value"}
    summary = json.loads((tmp_path / "py" / "fedclip-photo-seed0" / "summary.json").read_text())
    first = next(r for r in rows if r["method"] == "fedclip" and r["test_domain"] == "photo"
                 and r["seed"] == 0 and r["metric"] == "held_out_test_accuracy")
    assert first["value"] == summary["held_out_test_accuracy"]["photo"]


def test_sweep_refuses_per_run_options_and_bad_grids(tmp_path):
    with pytest.raises(ValueError, match="seed is set per run by the sweep"):
        fedclip.sweep(tmp_path / "s", methods="fedclip", seed=3)
    with pytest.raises(ValueError, match="seed 1 is given twice"):
        fedclip.sweep(tmp_path / "s", methods="fedclip", seeds=[1, 1], data=DATA, model=MODEL)
    with pytest.raises(ValueError, match="unknown method \"nope\""):
        fedclip.sweep(tmp_path / "s", methods=["nope"], data=DATA, model=MODEL)
    # A folder without config.json: a file that cannot be read is an OSError, as elsewhere.
    with pytest.raises(OSError, match="neither a sweep directory"):
        fedclip.table(tmp_path)
