"""The speed scripts run and print what they claim (tiny sizes on the CPU; the figures themselves
come from the scripts run at full size, never from tests), and result files name their commit."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
TINY = ["--preset", "tiny", "--batch", "4", "--device", "cpu", "--threads", "1", "model.enc_depth=1",
        "model.pred_depth=1"]


def _json_lines(script: str, *args: str) -> list[dict]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    out = subprocess.run([sys.executable, str(REPO / "benchmarks" / script), *args], env=env, cwd=REPO,
                         capture_output=True, text=True, timeout=300, check=True)
    return [json.loads(line) for line in out.stdout.strip().splitlines()]


def _json_line(script: str, *args: str) -> dict:
    return _json_lines(script, *args)[-1]


def test_train_speed_and_profile_report_per_step_figures():
    speed = _json_line("train_speed.py", *TINY, "--warmup", "1", "--windows", "2", "--steps-per-window", "1")
    assert speed["figure"] == "train_samples_per_s" and speed["value"] > 0 and len(speed["windows"]) == 2
    assert speed["batch"] == 4 and speed["compile"] is False and speed["compile_mode"] is None
    prof = _json_line("train_profile.py", *TINY, "--warmup", "1", "--steps", "2", "--profile-steps", "1")
    assert prof["figure"] == "train_step_profile" and prof["ms_per_step"] > 0
    assert abs(prof["samples_per_s"] - 4000 / prof["ms_per_step"]) < 1
    assert prof["dtype_casts_per_step"] > 0                          # counted from the profiler


def test_plan_latency_reports_the_solve_and_its_provenance():
    lines = _json_lines("plan_latency.py", "--planner", "cem,icem", "--samples", "8", "--iterations", "2",
                        "--elites", "2", "--runs", "1", "--warmup", "0", "--threads", "1", "--profile")
    assert [line["planner"] for line in lines] == ["cem", "icem"]
    for line in lines:
        assert line["bench"] == "plan_latency" and line["samples"] == 8 and line["iterations"] == 2
        assert line["median_ms"] > 0 and line["runs"] == 1 and line["profile_energy_calls"] == 2
        assert line["profile_energy_ms"] <= line["profile_total_ms"]
        assert line["machine"]["device"] == "cpu" and "commit" in line["git"] and line["date"]


def test_plan_latency_roofline_counts_the_solve_flops():
    two, four = (_json_line("plan_latency.py", "--samples", "8", "--iterations", str(n), "--elites", "2",
                            "--runs", "1", "--warmup", "0", "--threads", "1", "--roofline",
                            "--roofline-size", "128") for n in (2, 4))
    assert two["solve_gflop"] > 0 and two["peak_matmul_gflops"] > 0
    assert abs(four["solve_gflop"] / two["solve_gflop"] - 2) < 0.05   # one energy call per iteration
    assert abs(two["floor_ms_at_peak"] - 1e3 * two["solve_gflop"] / two["peak_matmul_gflops"]) < 0.2


def test_gpu_suite_refuses_a_bad_stage_or_a_machine_without_cuda_before_any_work(tmp_path):
    suite = [shutil.which("bash"), str(REPO / "benchmarks" / "gpu_suite.sh"), "run", str(tmp_path / "out")]
    env = {**os.environ, "PYTHON": sys.executable}
    bad = subprocess.run([*suite, "tests", "plna"], capture_output=True, text=True, cwd=REPO, env=env)
    assert bad.returncode == 2 and "unknown stage 'plna'" in bad.stderr
    if not torch.cuda.is_available():
        cpu = subprocess.run([*suite, "plan"], capture_output=True, text=True, cwd=REPO, env=env)
        assert cpu.returncode == 2 and "no CUDA device" in cpu.stderr
    assert not (tmp_path / "out").exists()


def test_git_commit_outside_git_uses_wm_git_commit(monkeypatch, tmp_path):
    sys.path.insert(0, str(REPO / "benchmarks"))
    import recipes

    monkeypatch.setattr(recipes, "ROOT", tmp_path)                    # not a git checkout
    monkeypatch.delenv("WM_GIT_COMMIT", raising=False)
    assert recipes.git_commit() == {"commit": None, "dirty": None}
    monkeypatch.setenv("WM_GIT_COMMIT", "abc123")
    assert recipes.git_commit() == {"commit": "abc123", "dirty": None, "source": "WM_GIT_COMMIT"}
