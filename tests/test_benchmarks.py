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
TINY = ["--preset", "tiny", "--batch", "4", "--device", "cpu", "--threads", "1", "model.encoder=vit",
        "model.enc_depth=1", "model.pred_depth=1"]


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
    assert "commit" in speed["git"] and speed["machine"]["device"] == "cpu" and speed["date"]
    roof = _json_line("train_speed.py", *TINY, "--warmup", "1", "--windows", "1", "--steps-per-window", "1",
                      "--roofline", "--roofline-size", "128")
    assert roof["step_gflop"] > 0 and abs(sum(roof["gflop_by_op"].values()) - roof["step_gflop"]) < 0.01
    assert "aten._scaled_dot_product_flash_attention_for_cpu_backward" in roof["gflop_by_op"]  # backward counted
    assert speed["malloc_tuned"] is True                              # as `wm` runs (Linux glibc)
    assert roof["samples_per_s_at_op_floor"] == round(4000 / roof["op_floor_ms"], 1)
    sheet = _json_line("train_speed.py", *TINY, "--datasheet", "1000,3")
    assert sheet["figure"] == "train_step_datasheet_roofline" and sheet["heavy_calls"] == roof["heavy_calls"]
    assert sheet["heavy_gflop"] == roof["step_gflop"]                 # the same calls, recorded without compute
    prof = _json_line("train_profile.py", *TINY, "--warmup", "1", "--steps", "2", "--profile-steps", "1")
    assert prof["figure"] == "train_step_profile" and prof["ms_per_step"] > 0
    assert abs(prof["samples_per_s"] - 4000 / prof["ms_per_step"]) < 1
    assert prof["dtype_casts_per_step"] > 0                          # counted from the profiler


def test_plan_latency_reports_the_solve_and_its_provenance():
    lines = _json_lines("plan_latency.py", "--planner", "cem,icem", "--samples", "8", "--iterations", "2",
                        "--elites", "2", "--runs", "1", "--warmup", "0", "--threads", "1", "--profile",
                        "--count-ops")
    assert [line["planner"] for line in lines] == ["cem", "icem"]
    for line in lines:
        assert line["bench"] == "plan_latency" and line["samples"] == 8 and line["iterations"] == 2
        assert line["median_ms"] > 0 and line["runs"] == 1 and line["profile_energy_calls"] == 2
        assert line["profile_energy_ms"] <= line["profile_total_ms"]
        by_op = line["compute_ops_by_op"]                              # the 12 most frequent
        assert line["compute_ops"] >= sum(by_op.values()) > by_op["aten.addmm"] > 0
        assert line["machine"]["device"] == "cpu" and "commit" in line["git"] and line["date"]


def test_plan_latency_bfloat16_weights_cast_no_weights_per_call():
    """bfloat16_weights (`wm eval precision=bf16`) adds two casts per energy call (actions in,
    latents out); autocast casts weights at every call. Both record the plan's cost under float32."""
    fp32, auto, weights = _json_lines("plan_latency.py", "--dtype", "float32,bfloat16,bfloat16_weights",
                                      "--samples", "8", "--iterations", "2", "--elites", "2", "--runs", "1",
                                      "--warmup", "1", "--threads", "1", "--count-ops")
    assert [x["dtype"] for x in (fp32, auto, weights)] == ["float32", "bfloat16", "bfloat16_weights"]
    assert weights["compute_ops"] - fp32["compute_ops"] == 2 * 2                 # 2 calls x 2 casts
    assert auto["compute_ops"] - fp32["compute_ops"] > 10 * 2                    # every weight, every call
    assert abs(weights["final_cost_fp32"] - weights["final_cost"]) < 0.05 * abs(weights["final_cost"])
    assert all(x["first_solve_s"] > 0 for x in (fp32, auto, weights))          # the untimed warm-up solve


def test_plan_latency_roofline_counts_the_solve_flops():
    two, four = (_json_line("plan_latency.py", "--samples", "8", "--iterations", str(n), "--elites", "2",
                            "--runs", "1", "--warmup", "0", "--threads", "1", "--roofline",
                            "--roofline-size", "128") for n in (2, 4))
    assert two["solve_gflop"] > 0 and two["peak_matmul_gflops"] > 0
    assert abs(four["solve_gflop"] / two["solve_gflop"] - 2) < 0.05   # one energy call per iteration
    assert abs(two["floor_ms_at_peak"] - 1e3 * two["solve_gflop"] / two["peak_matmul_gflops"]) < 0.2
    assert four["heavy_calls"] > two["heavy_calls"] > 0 and two["op_floor_ms"] > 0
    assert four["compute_ops"] > two["compute_ops"] > two["heavy_calls"]


def test_compute_op_count_skips_views_and_allocations():
    from benchmarks.roofline import HeavyOps

    x, rec = torch.randn(4, 6), HeavyOps()
    with rec:
        (x.view(6, 4).t() * 2).sum()                                   # two views, then mul and sum
        torch.empty(3), x[0].unsqueeze(0), x.reshape(24)                # an allocation and views
    assert dict(rec.compute_ops) == {"aten.mul": 1, "aten.sum": 1}


def test_roofline_counts_and_records_every_heavy_call_with_its_shapes():
    from benchmarks.roofline import HeavyOps, at_rates, count_flops, datasheet, op_floor

    lin, x = torch.nn.Linear(32, 16), torch.randn(8, 32)
    q = torch.randn(2, 4, 10, 8, requires_grad=True)                  # (B, heads, T, hd)

    def step():
        y = lin(x).sum() + torch.nn.functional.scaled_dot_product_attention(q, q, q).sum()
        y.backward()

    flops, per_op = count_flops(step)
    mm = 2 * 8 * 32 * 16                                               # one 8x32 @ 32x16 matmul
    att = 2 * (2 * 4) * 10 * 10 * 8                                    # one (T x T x hd) product per head
    assert per_op["aten.addmm"] == mm and per_op["aten.mm"] == mm      # forward; the weight's gradient
    assert sum(v for k, v in per_op.items() if "attention" in k) == 2 * att + 5 * att  # fwd 2, bwd 5
    assert flops == 2 * mm + 7 * att
    rec = HeavyOps()
    with rec:
        step()
        step()
    assert sum(rec.calls.values()) == 8 and len(rec.calls) == 4       # 4 distinct calls, each twice
    cost = {str(key[0]): c for key, c in rec.cost.items()}
    assert cost["aten.addmm.default"] == (mm, 4 * (16 + 8 * 32 + 32 * 16 + 8 * 16))  # bias, x, W read; y written
    assert sum(c[0] for c in cost.values()) == flops                  # per-call formulas = the counter's
    roof = at_rates(rec, peak_gflops=1.0, bandwidth_gbs=1e9)
    assert abs(roof["roofline_ms"] - 2e3 * flops / 1e9) < 1e-2 and roof["memory_bound_calls"] == 0
    assert roof["heavy_calls"] == 8 and roof["distinct_heavy_calls"] == 4
    fake = datasheet(step, peak_tflops=1e-3, bandwidth_tbs=1e6)       # recorded without computing
    assert fake["roofline_ms"] == round(1e3 * flops / 1e9, 2) and fake["heavy_calls"] == 4
    floor = op_floor(rec, torch.device("cpu"))
    rows = {r["op"]: r for r in floor["op_floor_top"]}
    assert rows["aten.addmm.default"]["shapes"] == "16, 8x32, 32x16" and rows["aten.addmm.default"]["calls"] == 2
    assert abs(floor["op_floor_ms"] - sum(r["ms"] for r in rows.values())) < 0.01
    assert all(r["ms_per_call"] > 0 for r in rows.values())
    assert floor["replay_failed"] == []


def test_gpu_suite_refuses_a_bad_stage_or_a_machine_without_cuda_before_any_work(tmp_path):
    suite = [shutil.which("bash"), str(REPO / "benchmarks" / "gpu_suite.sh"), "run", str(tmp_path / "out")]
    env = {**os.environ, "PYTHON": sys.executable}
    bad = subprocess.run([*suite, "tests", "plna"], capture_output=True, text=True, cwd=REPO, env=env)
    assert bad.returncode == 2 and "unknown stage 'plna'" in bad.stderr
    bad = subprocess.run([*suite, "envs"], capture_output=True, text=True, cwd=REPO,
                         env={**env, "SUITE_ENVS": "pusht reacher@fast"})
    assert bad.returncode == 2 and "bad SUITE_ENVS entry 'reacher@fast'" in bad.stderr
    if not torch.cuda.is_available():
        cpu = subprocess.run([*suite, "plan", "envs"], capture_output=True, text=True, cwd=REPO, env=env)
        assert cpu.returncode == 2 and "no CUDA device" in cpu.stderr
    assert not (tmp_path / "out").exists()


def test_gpu_lease_refuses_a_bad_stage_or_a_machine_without_cuda_before_any_work(tmp_path):
    lease = [shutil.which("bash"), str(REPO / "benchmarks" / "gpu_lease.sh"), str(tmp_path / "out")]
    env = {**os.environ, "PYTHON": sys.executable}
    bad = subprocess.run([*lease, "tests", "plna"], capture_output=True, text=True, cwd=REPO, env=env)
    assert bad.returncode == 2 and "unknown stage 'plna'" in bad.stderr
    if not torch.cuda.is_available():       # no wheels unpacked, nothing installed
        cpu = subprocess.run(lease, capture_output=True, text=True, cwd=REPO, env=env)
        assert cpu.returncode == 2 and "no CUDA device" in cpu.stderr
    assert not (tmp_path / "out").exists()


def test_gpu_suite_envs_stage_runs_its_envs_at_once_each_with_its_own_logs(tmp_path):
    """run_envs (the `envs` stage) with run_env replaced by a 1-second stand-in: every env starts
    before any ends, each writes its own <env>[_lr<LR>].jsonl / .log, and one failure fails the stage."""
    script = (REPO / "benchmarks" / "gpu_suite.sh").read_text()
    run_envs = script[script.index("run_envs() {"):]
    run_envs = run_envs[:run_envs.index("\n}\n") + 3]
    fake = ('run_env() { date +%s.%N >"$OUT/$1.start"; echo "out $1"; echo "log $1" >&2; sleep 1; '
            'date +%s.%N >"$OUT/$1.end"; [ "$1" != bad ]; }\n')

    def go(*envs):
        return subprocess.run([shutil.which("bash"), "-c", f"{run_envs}{fake}run_envs {' '.join(envs)}"],
                              env={**os.environ, "OUT": str(tmp_path)}).returncode
    envs = ("pusht", "reacher", "reacher@3e-4")
    assert go(*envs) == 0
    stamp = lambda env, what: float((tmp_path / f"{env}.{what}").read_text())  # noqa: E731
    assert max(stamp(e, "start") for e in envs) < min(stamp(e, "end") for e in envs)   # side by side
    for env, name in zip(envs, ("pusht", "reacher", "reacher_lr3e-4")):
        assert (tmp_path / f"{name}.jsonl").read_text() == f"out {env}\n"
        assert (tmp_path / f"{name}.log").read_text() == f"log {env}\n"
    assert go("pusht", "bad") != 0


def test_gpu_suite_env_stage_commands(tmp_path):
    """run_env's commands, with `echo` as the interpreter: the recipe at the entry's lr, iCEM, the
    controller's graphed evals (fp32, bf16, planner seeds 1 and 2) and one compare of them all."""
    script = (REPO / "benchmarks" / "gpu_suite.sh").read_text()
    run_env = script[script.index("run_env() {"):]
    run_env = run_env[:run_env.index("\n}\n") + 3]
    out = subprocess.run([shutil.which("bash"), "-c", f"{run_env}run_env reacher@3e-4"], capture_output=True,
                         text=True, env={**os.environ, "OUT": str(tmp_path), "PY": "echo", "SUITE_STEPS": "9"})
    lines = out.stdout.splitlines()
    assert lines[0].startswith("-m benchmarks.reproduce --env reacher --scale full --seeds 0 --steps 9")
    assert "--lr 3e-4" in lines[0] and f"--out {tmp_path}/runs/reacher_lr3e-4" in lines[0]
    assert lines[1].startswith("-m benchmarks.planner_table") and "--planners icem" in lines[1]
    evals = [x for x in lines if " eval " in f" {x} "]
    assert [x.split(" out=")[1].split()[0].rsplit("/", 1)[1] for x in evals] == \
        ["eval_cuda_graph", "eval_cuda_graph_bf16", "eval_cuda_graph_seed1", "eval_cuda_graph_seed2"]
    assert all("cuda_graph=true" in x for x in evals)
    assert "precision=bf16" in evals[1] and "planner.seed=1" in evals[2] and "planner.seed=2" in evals[3]
    assert "precision" not in evals[0] + evals[2] and "planner.seed" not in evals[0] + evals[1]
    compare = out.stderr.splitlines()[0]                                     # (its table goes to the log)
    assert compare.startswith("-m worldmodel.cli compare") and compare.count("/eval_cuda_graph") == 4
    names = "cem,icem,cem_cuda_graph,cem_cuda_graph_bf16,cem_cuda_graph_seed1,cem_cuda_graph_seed2"
    assert f"names=[{names}]" in compare


def test_git_commit_outside_git_uses_wm_git_commit(monkeypatch, tmp_path):
    from benchmarks import recipes

    monkeypatch.setattr(recipes, "ROOT", tmp_path)                    # not a git checkout
    monkeypatch.delenv("WM_GIT_COMMIT", raising=False)
    assert recipes.git_commit() == {"commit": None, "dirty": None}
    monkeypatch.setenv("WM_GIT_COMMIT", "abc123")
    assert recipes.git_commit() == {"commit": "abc123", "dirty": None, "source": "WM_GIT_COMMIT"}
