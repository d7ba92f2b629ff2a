"""`wm compare`: evaluations of the same tasks side by side, paired tests, refusals."""
from __future__ import annotations

import json

import pytest

from worldmodel.cli import main
from worldmodel.evaluation.compare import compare, default_names, task_keys
from worldmodel.evaluation.stats import mcnemar, two_proportion


def results(outcomes: str, seeds=None, protocol=None, env="tworoom", random=None):
    """A `wm eval` results.json as the command writes it, per-episode fields only where compare reads them."""
    seeds = seeds or [100 + i for i in range(len(outcomes))]
    eps = [{"index": i, "seed": s, "start_step": 7, "success": c == "1", "steps_to_success": 12 if c == "1" else None,
            "closest_error": 0.5 if c == "1" else 2.0 + i, "diverged_at": None,
            "random_success": None if random is None else random[i] == "1"}
           for i, (c, s) in enumerate(zip(outcomes, seeds))]
    return {"env": env, "planner": "cem", "checkpoint": "runs/x/best.pt", "per_episode": eps,
            "protocol": protocol or {"budget": 50, "goal_offset": 25, "policy": "expert", "episode_len": 100},
            "latency_ms": {"p50": 1500.0}}


def write(path, res):
    path.mkdir(parents=True)
    (path / "results.json").write_text(json.dumps(res))
    return path


def test_mcnemar_exact_values():
    assert mcnemar([True] * 10 + [False] * 5, [False] * 15) == (10, 0, pytest.approx(2 / 1024))
    a_only, b_only, p = mcnemar([True] * 11 + [False] * 6, [False] * 11 + [True] * 6)
    assert (a_only, b_only) == (11, 6)
    assert p == pytest.approx(2 * sum(__import__("math").comb(17, i) for i in range(7)) / 2 ** 17)  # 0.332
    assert mcnemar([True, False], [True, False]) == (0, 0, 1.0)                      # nothing discordant
    with pytest.raises(ValueError, match="different lengths"):
        mcnemar([True], [True, False])


def test_two_proportion_z_test_values():
    # the README's TwoRoom batch 128 vs batch 32 rows: 120/150 against 56/150, z = 7.50
    assert two_proportion(120, 150, 56, 150) == pytest.approx(6.2e-14, rel=0.05)
    assert two_proportion(15, 150, 12, 150) == pytest.approx(0.55, abs=0.005)
    assert two_proportion(30, 50, 30, 50) == 1.0 and two_proportion(0, 5, 0, 7) == 1.0   # equal; no variance
    assert two_proportion(45, 50, 30, 50) == two_proportion(30, 50, 45, 50)              # two-sided
    with pytest.raises(ValueError, match="episodes on both sides"):
        two_proportion(0, 0, 1, 2)


def test_compare_pairs_every_run_with_the_first_on_shared_tasks():
    a = results("1100000000", random="1000000000")
    b = results("1111111111")
    c = results("0110", seeds=[100, 101, 102, 999])             # 3 of its 4 tasks are a's
    cmp = compare([a, b, c], ["a", "b", "c"])
    assert cmp["tasks"] == 3 and cmp["tasks_per_run"] == [10, 10, 4]
    ra, rb, rc = cmp["runs"]
    assert (ra["outcomes"], rb["outcomes"], rc["outcomes"]) == ("110", "111", "011")
    assert "vs_first" not in ra
    assert rb["vs_first"] == {"only_this": 1, "only_first": 0, "p_value": 1.0,
                              "two_proportion_p": pytest.approx(two_proportion(3, 3, 2, 3))}
    assert (rc["vs_first"]["only_this"], rc["vs_first"]["only_first"]) == (1, 1)
    assert ra["per_run"] == [2] and ra["closest_failures"] == 4.0 and ra["steps_to_success"] == 12 and ra["plan_ms_p50"] == 1500.0
    assert cmp["random_floor"]["outcomes"] == "100" and cmp["random_floor"]["successes"] == 1
    # 10 tasks that only b solved: the paired test sees it where two 10-task Wilson intervals overlap.
    cmp = compare([results("0" * 10), results("1" * 10)], ["a", "b"])
    assert cmp["runs"][1]["vs_first"]["p_value"] == pytest.approx(2 / 1024)
    assert cmp["random_floor"] is None


def test_an_episode_drawn_twice_stays_two_tasks():
    assert task_keys(results("01", seeds=[5, 5])["per_episode"]) == [(5, 7, 0), (5, 7, 1)]
    cmp = compare([results("01", seeds=[5, 5]), results("11", seeds=[5, 5])], ["a", "b"])
    assert cmp["tasks"] == 2 and cmp["runs"][1]["vs_first"]["only_this"] == 1


def test_compare_refuses_other_tasks_before_printing_anything():
    base = results("10")
    with pytest.raises(ValueError, match="posed different tasks.*goal_offset 25 vs 10"):
        compare([base, results("10", protocol={**base["protocol"], "goal_offset": 10})], ["a", "b"])
    with pytest.raises(ValueError, match="env 'tworoom' vs 'pusht'"):
        compare([base, results("10", env="pusht")], ["a", "b"])
    with pytest.raises(ValueError, match="env_kwargs"):
        compare([results("1", protocol={"env_kwargs": {"camera": 0}}),
                 results("1", protocol={"env_kwargs": {"camera": 1}})], ["a", "b"])
    with pytest.raises(ValueError, match="share no task.*same eval_seed="):
        compare([base, results("10", seeds=[7, 8])], ["a", "b"])
    # An older results.json without the protocol fields is compared on its tasks alone.
    assert compare([base, {**results("01"), "protocol": {}}], ["a", "b"])["tasks"] == 2


def test_default_names_keep_what_tells_runs_apart(tmp_path):
    paths = [tmp_path / "repro" / r / "seed0" / "eval" / "results.json" for r in ("reacher_cpu", "reacher_cpu_ol")]
    assert default_names(paths) == ["reacher_cpu", "reacher_cpu_ol"]
    assert default_names([tmp_path / "a" / "results.json", tmp_path / "a" / "b" / "results.json"]) == ["a", "a/b"]
    assert default_names([tmp_path / "x" / "results.json"] * 2) == ["0:x", "1:x"]


def test_wm_compare_cli_prints_writes_and_refuses(tmp_path, capsys):
    a = write(tmp_path / "runs, one" / "cem", results("1100000000", random="1000000000"))  # comma, space
    b = write(tmp_path / "runs, one" / "icem", results("1111110000"))
    out = tmp_path / "cmp"
    assert main(["compare", str(a), str(b / "results.json"), f"out={out}"]) == 0
    text = capsys.readouterr().out
    assert "10 shared tasks; paired tests against the first, cem" in text
    assert "icem" in text and "+4 / -0, p = 0.12" in text and "random" in text
    saved = json.loads((out / "compare.json").read_text())
    assert [r["name"] for r in saved["runs"]] == ["cem", "icem"] and saved["files"][0] == str(a / "results.json")
    assert (out / "compare.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads((out / "config.json").read_text())["runs"] == [str(a), str(b / "results.json")]
    assert main(["compare", str(a), str(b), "names=[A,B]"]) == 0
    assert "against the first, A" in capsys.readouterr().out
    # One run, labels that don't fit, a missing or foreign file: refused with what to pass instead.
    assert main(["compare", str(a)]) == 2
    assert "two or more evaluations" in capsys.readouterr().err
    assert main(["compare", str(a), str(b), "names=[A]"]) == 2
    assert "one per run" in capsys.readouterr().err
    assert main(["compare", str(a), str(tmp_path / "nope")]) == 2
    assert "pass a `wm eval` out= directory" in capsys.readouterr().err
    (tmp_path / "foreign.json").write_text(json.dumps({"per_episode": [{"index": 0}]}))
    assert main(["compare", str(a), str(tmp_path / "foreign.json")]) == 2
    assert "not a `wm eval` results.json" in capsys.readouterr().err


def test_runs_sharing_a_name_are_pooled_seed_by_seed():
    a0, a1 = results("1100", random="1000"), results("1000")
    b0, b1 = results("1110"), results("1111")
    cmp = compare([a0, a1, b0, b1], ["a", "a", "b", "b"])
    ra, rb = cmp["runs"]
    assert (ra["runs"], ra["episodes"], ra["successes"], ra["per_run"]) == (2, 8, 3, [2, 1])
    assert rb["outcomes"] == "11101111" and rb["per_run"] == [3, 4]
    assert (rb["vs_first"]["only_this"], rb["vs_first"]["only_first"]) == (4, 0)   # 1 + 3 over both seeds
    assert cmp["random_floor"]["episodes"] == 4
    with pytest.raises(ValueError, match="as many runs: a 2, b 1"):
        compare([a0, a1, b0], ["a", "a", "b"])


def test_wm_compare_cli_pools_seeds(tmp_path, capsys):
    paths = [str(write(tmp_path / r / f"seed{i}", results(o))) for r, outs in (("a", ("1100", "1000")),
                                                                          ("b", ("1110", "1111")))
             for i, o in enumerate(outs)]
    assert main(["compare", *paths, "names=[a,a,b,b]", f"out={tmp_path / 'cmp'}"]) == 0
    text = capsys.readouterr().out
    assert "4 shared tasks x 2 runs per name, pooled" in text and "3/8 = 38%" in text and "2 / 1" in text
    assert "z-test p" in text and f"{two_proportion(7, 8, 3, 8):.2g}" in text
    assert (tmp_path / "cmp" / "compare.png").is_file()


def record(rows, tasks=None, env="tworoom"):
    """A benchmarks/reproduce.py record: per training seed its outcomes and random floor's, in task order."""
    rec = {"bench": "reproduce", "env": env, "per_seed": [
        {"seed": s, "outcomes": o, "random_outcomes": r, "planner": "cem", "plan_latency_ms_p50": 900.0,
         "results": f"runs/x/seed{s}/eval/results.json"} for s, o, r in rows]}
    if tasks:
        rec.update(tasks=tasks, protocol={"budget": 50, "goal_offset": 25, "policy": "expert", "episode_len": 100})
    return rec


def test_reproduce_records_compare_as_their_seeds(tmp_path, capsys):
    """A results-table row's JSON is its training seeds under one name: paired with `wm eval` dirs by
    task keys, or with another older record by task order where their random floors agree."""
    keyed = record([(1, "0110", "1000"), (0, "1100", "1000")], tasks=[[100 + i, 7] for i in range(4)])
    a = tmp_path / "rows" / "a.json"
    a.parent.mkdir()
    a.write_text(json.dumps(keyed))
    evals = [str(write(tmp_path / "b" / f"seed{i}", results(o))) for i, o in enumerate(("1110", "1111"))]
    assert main(["compare", str(a), *evals, "names=[a,b,b]"]) == 0          # one name per path
    assert "+3 / -0" in capsys.readouterr().out                              # seed 0 with seed 0, 1 with 1
    assert main(["compare", str(a), *evals, "names=[a,b]"]) == 2
    assert "one per run" in capsys.readouterr().err
    assert main(["compare", str(a), str(a), f"out={tmp_path / 'cmp'}"]) == 0    # default names from the file
    assert "0:a" in capsys.readouterr().out
    cmp = json.loads((tmp_path / "cmp" / "compare.json").read_text())
    ra = cmp["runs"][0]
    assert ra["per_run"] == [2, 2] and ra["outcomes"] == "11000110" and not cmp["paired_by_order"]  # seed order
    assert cmp["random_floor"]["outcomes"] == "1000"
    b = tmp_path / "rows" / "b.json"
    b.write_text(json.dumps(record([(0, "1110", "1000"), (1, "1111", "1000")], tasks=[[100 + i, 7] for i in range(4)])))
    assert main(["compare", str(a), str(b)]) == 0
    text = capsys.readouterr().out
    assert "against the first, a" in text and "+3 / -0" in text and "2 / 2" in text and "3 / 4" in text

    old_a, old_b, other = (tmp_path / "rows" / f"{n}.json" for n in ("old_a", "old_b", "other"))
    old_a.write_text(json.dumps(record([(0, "1100", "1000")])))
    old_b.write_text(json.dumps(record([(0, "1111", "1000")])))
    other.write_text(json.dumps(record([(0, "1111", "0100")])))
    assert main(["compare", str(old_a), str(old_b)]) == 0
    text = capsys.readouterr().out
    assert "paired by task order" in text and "+2 / -0" in text
    assert main(["compare", str(old_a), str(other)]) == 2                   # floors disagree: other tasks
    assert "paired by task order" in capsys.readouterr().err
    keyed_one = tmp_path / "rows" / "keyed_one.json"                         # a newer record: by order too
    keyed_one.write_text(json.dumps(record([(0, "0111", "1000")], tasks=[[100 + i, 7] for i in range(4)])))
    assert main(["compare", str(old_a), str(keyed_one)]) == 0
    assert "+2 / -1" in capsys.readouterr().out
    assert main(["compare", str(old_a), evals[0]]) == 2                     # no task keys to pair with a dir
    assert "paired by task order" in capsys.readouterr().err
    bare = tmp_path / "rows" / "bare.json"
    bare.write_text(json.dumps({"bench": "reproduce", "env": "tworoom", "per_seed": [{"seed": 0, "results": "r.json"}]}))
    assert main(["compare", str(bare), str(old_a)]) == 2
    err = capsys.readouterr().err
    assert "no per-task outcomes" in err and "r.json" in err


def test_records_pool_their_planner_seeds_on_request(tmp_path, capsys):
    rows = [(0, "1100", "1000"), (1, "0110", "1000")]
    a, b = record(rows), record(rows)
    for rec, extra in ((a, ("1000", "0010")), (b, ("1111", "1111"))):       # planner seed 1 of each seed
        for row, o in zip(rec["per_seed"], extra):
            row["planner_seeds"] = [{"planner_seed": 1, "outcomes": o, "plan_latency_ms_p50": 800.0}]
    pa, pb, bare = (tmp_path / f"{n}.json" for n in ("a", "b", "bare"))
    pa.write_text(json.dumps(a))
    pb.write_text(json.dumps(b))
    bare.write_text(json.dumps(record(rows)))
    assert main(["compare", str(pa), str(pb), "planner_seeds=true", f"out={tmp_path / 'cmp'}"]) == 0
    cmp = json.loads((tmp_path / "cmp" / "compare.json").read_text())
    ra, rb = cmp["runs"]
    assert ra["per_run"] == [2, 1, 2, 1] and rb["per_run"] == [2, 4, 2, 4]   # seed 0: planner 0, 1; seed 1: ...
    assert (rb["vs_first"]["only_this"], rb["vs_first"]["only_first"]) == (6, 0)
    assert main(["compare", str(pa), str(pb)]) == 0                           # default: planner seed 0 only
    assert "2 / 2" in capsys.readouterr().out
    assert main(["compare", str(pa), str(bare), "planner_seeds=true"]) == 2
    assert "holds no planner seed but 0" in capsys.readouterr().err


def test_seeds_picks_a_records_training_seeds(tmp_path, capsys):
    """seeds=[0] sets a one-seed record beside seed 0 of a three-seed one (otherwise refused: unequal pools)."""
    tasks = [[100 + i, 7] for i in range(4)]
    three, one = tmp_path / "three.json", tmp_path / "one.json"
    three.write_text(json.dumps(record([(0, "1000", "1000"), (1, "1100", "1000"), (2, "1110", "1000")], tasks=tasks)))
    one.write_text(json.dumps(record([(0, "1111", "1000")], tasks=tasks)))
    assert main(["compare", str(three), str(one)]) == 2
    assert "as many runs" in capsys.readouterr().err
    assert main(["compare", str(three), str(one), "seeds=[0]", f"out={tmp_path / 'cmp'}"]) == 0
    ra, rb = json.loads((tmp_path / "cmp" / "compare.json").read_text())["runs"]
    assert ra["per_run"] == [1] and rb["per_run"] == [4] and rb["vs_first"]["only_this"] == 3
    assert main(["compare", str(three), str(one), "seeds=[1]"]) == 2        # one.json holds seed 0 only
    assert "holds training seeds [0], not [1]" in capsys.readouterr().err
    assert main(["compare", str(three), str(one), "seeds=[0,0]"]) == 2
    assert "once" in capsys.readouterr().err
    evals = [str(write(tmp_path / "e" / f"seed{i}", results(o))) for i, o in enumerate(("1110", "1111"))]
    assert main(["compare", *evals, "seeds=[0]"]) == 2                        # no record to pick from
    assert "none of the runs" in capsys.readouterr().err
