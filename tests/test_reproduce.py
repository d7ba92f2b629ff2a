"""Smoke tests of the result recipes (benchmarks/reproduce.py, planner_table.py, sigreg_ablation.py).

The scripts run in-process at absurdly small sizes (6 episodes of 40 steps at 32 px, 2 training
steps at batch 8, 2 eval episodes, 8 CEM samples x 2 iterations, one torch thread) into tmp dirs;
the checks are on the JSON they print and write, and on the equal-compute arithmetic.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
from benchmarks import planner_table, recipes, reproduce, sigreg_ablation

TINY = ["--episodes", "6", "--episode-len", "40", "--steps", "2", "--batch-size", "8", "--image-size", "32",
        "--eval-episodes", "2", "--plan-samples", "8", "--plan-iterations", "2", "--videos", "0",
        "--workers", "1", "--threads", "1", "--device", "cpu", "--quiet",
        "--train-extra", "eval_clips=16", "tensorboard=false"]


def _lines(out: str) -> list[dict]:
    return [json.loads(x) for x in out.splitlines() if x.startswith("{")]


@pytest.fixture
def one_thread(monkeypatch):
    """The scripts set torch's thread count process-wide; restore it for the other tests."""
    monkeypatch.setenv("MUJOCO_GL", "egl")
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


def test_every_env_has_both_scales_and_reference():
    for env in ("tworoom", "reacher", "pusht"):
        cpu, full = recipes.RECIPES[(env, "cpu")], recipes.RECIPES[(env, "full")]
        assert (cpu.model, cpu.episodes) == ("tiny", 300)
        assert cpu.steps == (6000 if env == "pusht" else 2000)
        assert cpu.ensemble == (3 if env == "pusht" else 1)             # models per training seed
        assert cpu.batch_size == (128 if env in ("tworoom", "reacher") else 32)
        assert (cpu.plan_samples, cpu.plan_iterations, cpu.eval_episodes) == (None, None, 50)   # the presets
        assert full.device == "cuda" and full.model == "lewm"
        assert set(recipes.REFERENCE[env]) >= {"LeWM", "DINO-WM", "PLDM"}
    assert recipes.REFERENCE["pusht"]["LeWM"] == 96 and recipes.REFERENCE["reacher"]["DINO-WM"] == 79
    pusht = recipes.RECIPES[("pusht", "cpu")]             # its own SIGReg pull, passed to wm train
    train = recipes.train_args(pusht, "d", "o", 0, extra=("precision=bf16",))
    assert train.index("sigreg_weight=1.0") < train.index("precision=bf16")   # --train-extra still wins


def test_override_marks_recipe_unverified():
    r, changed = recipes.get_recipe("tworoom", "cpu", steps=3, episodes=None)
    assert r.steps == 3 and changed == {"steps": 3}
    with pytest.raises(ValueError, match="no recipe"):
        recipes.get_recipe("hopper", "cpu")
    dmc, _ = recipes.get_recipe("dm_control/finger-turn_easy", "cpu")      # a generic-adapter row
    assert recipes.collect_args(dmc, "d")[0] == "env=dm_control/finger-turn_easy"
    assert recipes.slug(dmc.env) == "dm_control_finger-turn_easy"           # one path component


def test_dry_run_prints_pasteable_commands(capsys):
    assert reproduce.main(["--env", "pusht", "--scale", "full", "--seeds", "0", "1", "--dry-run"]) is None
    (rec,) = _lines(capsys.readouterr().out)
    cmds = rec["commands"]
    assert [c.split()[1] for c in cmds] == ["collect", "train", *["eval"] * 4, "train", *["eval"] * 4]
    assert all(c.startswith("wm ") for c in cmds)
    assert "episode_len=200" in cmds[0] and "model=lewm" in cmds[1] and "device=cuda" in cmds[1]
    assert "seed=1" in cmds[6] and "planner=" not in cmds[2] and "random_floor=true" in cmds[2]   # wm eval's defaults
    # the same checkpoint planned as LeWM does, then both plannings on LeWM's task draw; one random floor per draw
    lewm, ours_training, lewm_training = cmds[3:6]
    assert "planner=cem receding_horizon=5 goal_at=last_chunk" in lewm and "random_floor=false" in lewm
    assert "tasks=training" in ours_training and "random_floor=true" in ours_training and "planner=" not in ours_training
    assert "planner=cem" in lewm_training and "tasks=training" in lewm_training and "random_floor=false" in lewm_training
    assert rec["scale"] == "full" and rec["overrides"] == {} and "verified" not in rec["recipe"]

    reproduce.main(["--env", "reacher", "--seeds", "0", "--planner-seeds", "3", "--plannings", "toolkit",
                    "--draws", "heldout", "--dry-run"])
    cmds = _lines(capsys.readouterr().out)[0]["commands"]
    assert [c.split()[1] for c in cmds] == ["collect", "train", "eval", "eval", "eval"]
    assert "planner.seed" not in cmds[2] and "random_floor=true" in cmds[2]
    for k, c in ((1, cmds[3]), (2, cmds[4])):
        assert f"planner.seed={k}" in c and "random_floor=false" in c and f"eval_planner{k}" in c
    with pytest.raises(SystemExit):
        reproduce.parse(["--env", "pusht", "--planner-seeds", "0"])

    # planning "distilled": wm distill per seed, right after its training; that planning's evals use its policy
    reproduce.main(["--env", "reacher", "--seeds", "0", "--plannings", "distilled", "toolkit", "--draws", "heldout",
                    "--dry-run"])
    cmds = _lines(capsys.readouterr().out)[0]["commands"]
    assert [c.split()[1] for c in cmds] == ["collect", "train", "distill", "eval", "eval"]
    assert "checkpoint=runs/repro/reacher_cpu/seed0/train/best.pt" in cmds[2] and "episodes=120" in cmds[2]
    assert "out=runs/repro/reacher_cpu/seed0/distill" in cmds[2]
    assert "distilled=runs/repro/reacher_cpu/seed0/distill/policy.pt" in cmds[3] and "distilled=" not in cmds[4]

    # ensemble K (Push-T's cpu recipe: 3): training seed s trains seeds s*K .. s*K+K-1 and plans with all of them
    reproduce.main(["--env", "pusht", "--seeds", "1", "--plannings", "toolkit", "--draws", "heldout", "--dry-run"])
    (rec,) = _lines(capsys.readouterr().out)
    cmds = rec["commands"]
    assert rec["recipe"]["ensemble"] == 3 and not rec["overrides"]
    assert [c.split()[1] for c in cmds] == ["collect", "train", "train", "train", "eval"]
    assert [re.search(r" seed=(\d+)", c).group(1) for c in cmds[1:4]] == ["3", "4", "5"]
    assert ("checkpoint=runs/repro/pusht_cpu/seed3/train/best.pt 'ensemble=[runs/repro/pusht_cpu/seed4/train/best.pt,"
            "runs/repro/pusht_cpu/seed5/train/best.pt]'") in cmds[4] and "out=runs/repro/pusht_cpu/ensemble1/eval" in cmds[4]
    with pytest.raises(SystemExit):
        reproduce.parse(["--env", "pusht", "--ensemble", "0"])

    # --collect-extra: other data (the policy's kwargs); held-out tasks stay the policy's own at its defaults
    reproduce.main(["--env", "pusht", "--seeds", "0", "--ensemble", "1", "--plannings", "toolkit", "--collect-extra",
                    "+policy_kwargs.noise=0.6", "--dry-run"])
    (rec,) = _lines(capsys.readouterr().out)
    cmds = rec["commands"]
    assert "+policy_kwargs.noise=0.6" in cmds[0]
    assert rec["overrides"] == {"ensemble": 1, "collect_extra": ["+policy_kwargs.noise=0.6"]}
    assert "policy=expert" in cmds[2] and "tasks=training" in cmds[3] and "policy=" not in cmds[3]


def test_equal_compute_budgets():
    from worldmodel.planners import make_planner

    assert planner_table.equal_compute("cem", 9000) == ({"samples": 300, "iterations": 30, "elites": 30}, 9000)
    assert planner_table.equal_compute("mppi", 9000)[1] == 9000
    ov, n = planner_table.equal_compute("gradient", 9000)
    assert ov == {"samples": 60, "iterations": 50} and n == 60 * 148
    ov, n = planner_table.equal_compute("icem", 9000)
    icem = make_planner("icem", samples=ov["samples"], iterations=ov["iterations"], elites=ov["elites"])
    assert n == sum(icem.population(i) for i in range(ov["iterations"])) <= 9000
    assert planner_table.icem_sequences(ov["samples"] + 1, 10, 20) > 9000
    with pytest.raises(ValueError, match="floor"):
        planner_table.equal_compute("icem", 100)


def test_planner_table_dry_run(capsys):
    planner_table.main(["--checkpoint", "missing.pt", "--budget-sequences", "3000", "--dry-run"])
    rows = _lines(capsys.readouterr().out)
    assert [r["planner"] for r in rows] == ["cem", "icem", "mppi", "gradient"]
    assert all(r["sequences_per_plan"] <= 3000 for r in rows)
    assert "random_floor=true" in rows[0]["command"] and "random_floor=false" in rows[1]["command"]


@pytest.mark.slow
def test_reproduce_then_planner_table_then_ablation(tmp_path, capsys, one_thread, monkeypatch):
    out, js = tmp_path / "repro", tmp_path / "repro.json"
    rec = reproduce.main(["--env", "tworoom", "--scale", "cpu", "--out", str(out), "--json", str(js), *TINY])
    lines = _lines(capsys.readouterr().out)
    assert len(lines) == 2 and lines[1]["aggregate"] is True
    seed = lines[0]
    assert (seed["planning"], seed["draw"]) == ("toolkit", "heldout")
    assert set(seed["evals"]) == {"lewm/heldout", "toolkit/training", "lewm/training"}
    for name, e in seed["evals"].items():       # every other planning and draw, with per-task outcomes
        assert len(e["outcomes"]) == e["episodes"] == 2 and e["outcomes"].count("1") == e["successes"]
        assert ("random_floor" in e) == (name == "toolkit/training") and ("tasks" in e) == name.endswith("training")
    assert lines[1]["evals"]["lewm/heldout"]["per_seed"] == [seed["evals"]["lewm/heldout"]["successes"]]
    assert json.loads(Path(seed["evals"]["lewm/heldout"]["results"]).read_text())["config"]["planner"]["name"] == "cem"
    for k in ("success_rate", "ci95", "random_floor", "eval_episodes", "dataset", "train_s", "collect_s",
              "eval_s", "plan_latency_ms_p50", "device", "gpu", "commands", "git_commit", "goal_error"):
        assert k in seed, k
    assert seed["eval_episodes"] == 2 and seed["dataset"] == {**seed["dataset"], "episodes": 6, "frames": 240}
    assert 0 <= seed["ci95"][0] <= seed["success_rate"] <= seed["ci95"][1] <= 1
    assert seed["goal_error"]["closest"] <= seed["goal_error"]["start"]
    assert len(seed["outcomes"]) == 2 and seed["outcomes"].count("1") == seed["successes"]
    assert seed["random_outcomes"].count("1") == seed["random_floor"]["successes"]
    assert seed["scale"] == "cpu-reduced" and seed["verified"] is False
    saved = json.loads(js.read_text())
    assert saved["aggregate"]["reference"]["LeWM"] == 87 and saved["overrides"]["steps"] == 2
    assert saved["aggregate"]["success_min"] <= saved["aggregate"]["success_mean"] <= saved["aggregate"]["success_max"]
    assert rec["per_seed"][0]["commands"][1].startswith("wm train ")
    # the record names its tasks: `wm compare` pairs it with its own eval directory task by task
    from worldmodel.evaluation.compare import compare, load_results
    assert len(saved["tasks"]) == 2 and saved["protocol"]["goal_offset"] == 25
    (_, (as_record,)), (_, (as_eval,)) = load_results(js), load_results(out / "seed0" / "eval")
    same = compare([as_record, as_eval], ["record", "eval"])
    assert same["tasks"] == 2 and same["runs"][1]["vs_first"]["only_this"] == same["runs"][1]["vs_first"]["only_first"] == 0

    # a later run of more seeds of the same recipe and dataset adds its rows to the same file
    more = reproduce.main(["--env", "tworoom", "--scale", "cpu", "--out", str(out), "--json", str(js),
                           "--seeds", "1", "--resume", *TINY])
    capsys.readouterr()
    assert [r["seed"] for r in more["per_seed"]] == [0, 1] and more["aggregate"]["seeds"] == [0, 1]
    assert more["collect_s"] == more["per_seed"][1]["collect_s"] == rec["collect_s"]
    assert more["per_seed"][1]["dataset"] == more["dataset"] == json.loads(json.dumps(rec["dataset"]))
    assert more["per_seed"][0] == json.loads(json.dumps(rec["per_seed"][0]))

    # planner seeds added to a finished row: training has nothing left to do and keeps its time
    pooled = reproduce.main(["--env", "tworoom", "--scale", "cpu", "--out", str(out), "--json", str(js),
                             "--seeds", "0", "--planner-seeds", "2", "--resume", *TINY])
    capsys.readouterr()
    row0 = pooled["per_seed"][0]
    assert (row0["train_s"], row0["train_wall_s"]) == (rec["per_seed"][0]["train_s"], rec["per_seed"][0]["train_wall_s"])
    (extra,) = row0["planner_seeds"]
    assert extra["planner_seed"] == 1 and len(extra["outcomes"]) == extra["episodes"] == 2
    assert "planner.seed=1" in extra["command"] and "random_floor=false" in extra["command"]
    assert json.loads(Path(extra["results"]).read_text())["config"]["planner"]["seed"] == 1
    assert "planner_seeds" not in pooled["per_seed"][1]                  # seed 1 kept as it was
    over = pooled["aggregate"]["over_planner_seeds"]
    assert over["evals"] == 3 and over["episodes"] == 6
    assert over["successes"] == row0["successes"] + extra["successes"] + pooled["per_seed"][1]["successes"]
    fresh = reproduce.main(["--env", "tworoom", "--scale", "cpu", "--out", str(out), "--json", str(tmp_path / "b.json"),
                            "--seeds", "1", "--resume", *TINY])               # a file without its training time
    capsys.readouterr()
    assert fresh["per_seed"][0]["train_s"] is fresh["per_seed"][0]["train_wall_s"] is None
    assert rec["per_seed"][0]["train_from_step"] == 0 and rec["pending_seeds"] == []

    # killed during seed 1: the file already holds seed 0 (one more step on its checkpoint: resumed)
    def killed(name, args):
        if name == "train" and "seed=1" in args:
            raise KeyboardInterrupt
        return real_timed(name, args)
    real_timed, longer = reproduce.timed, tmp_path / "longer.json"
    monkeypatch.setattr(reproduce, "timed", killed)
    with pytest.raises(KeyboardInterrupt):
        reproduce.main(["--env", "tworoom", "--scale", "cpu", "--out", str(out), "--json", str(longer),
                        "--seeds", "0", "1", "--resume", *TINY, "--steps", "3"])
    capsys.readouterr()
    kept = json.loads(longer.read_text())
    assert [r["seed"] for r in kept["per_seed"]] == [0] and kept["pending_seeds"] == [1]
    assert kept["per_seed"][0]["train_from_step"] == 2 and kept["per_seed"][0]["train_final"]["step"] == 3

    # an ensemble of the two trained seeds: one eval planning with both
    monkeypatch.setattr(reproduce, "timed", real_timed)
    ens = reproduce.main(["--env", "tworoom", "--scale", "cpu", "--out", str(out), "--json", str(tmp_path / "e.json"),
                          "--seeds", "0", "--ensemble", "2", "--plannings", "toolkit", "--draws", "heldout",
                          "--resume", *TINY, "--steps", "3"])
    capsys.readouterr()
    row = ens["per_seed"][0]
    assert [m["seed"] for m in row["members"]] == [0, 1] and row["results"] == str(out / "ensemble0" / "eval" / "results.json")
    assert json.loads(Path(row["results"]).read_text())["config"]["ensemble"] == [str(out / "seed1" / "train" / "best.pt")]

    ckpt = out / "seed0" / "train" / "best.pt"
    pt_json = tmp_path / "pt.json"
    planner_table.main(["--checkpoint", str(ckpt), "--budget-sequences", "200", "--episodes", "1",
                        "--planners", "cem", "gradient", "--out", str(tmp_path / "pt"), "--json", str(pt_json),
                        "--threads", "1", "--quiet"])
    rows = _lines(capsys.readouterr().out)
    assert [r["planner"] for r in rows] == ["cem", "gradient"]
    assert all(r["sequences_per_plan"] <= 200 and r["latency_ms_p50"] > 0 for r in rows)
    assert json.loads(pt_json.read_text())["random_floor"] is not None

    sa_json = tmp_path / "sa.json"
    sigreg_ablation.main(["--env", "tworoom", "--data", str(out / "data"), "--out", str(tmp_path / "sa"),
                          "--json", str(sa_json), *TINY])
    rows = _lines(capsys.readouterr().out)
    assert [r["sigreg_weight"] for r in rows] == [0.0, 0.09]
    for r in rows:
        for k in ("eff_rank", "std_min", "val_pred", "val_nochange", "success_rate"):
            assert isinstance(r[k], float), k
        assert r["step"] == 2
    assert json.loads(sa_json.read_text())["verified"] is False


def test_icem_cpu_preset_is_the_measured_1500_sequence_setting():
    """configs/planner/icem_cpu.yaml is exactly what planner_table ran at 1,500 sequences (icem.yaml
    with equal_compute's samples, iterations and elites), the setting the README recommends."""
    import yaml

    from worldmodel.planners import ICEM, planner_from_config

    cfg_dir = ROOT / "configs" / "planner"
    preset = yaml.safe_load((cfg_dir / "icem_cpu.yaml").read_text())
    overrides, sequences = planner_table.equal_compute("icem", 1500)
    assert preset == {**yaml.safe_load((cfg_dir / "icem.yaml").read_text()), **overrides}
    assert sequences <= 1500 and isinstance(planner_from_config(preset), ICEM)
