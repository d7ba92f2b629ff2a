"""Does `wm check` (no simulator) agree with `wm eval` (simulator)? One JSON line per checkpoint.

Runs `wm check` on a checkpoint whose `wm eval` results exist and prints the check's headline
figures next to the simulator's success rate and random floor, so that several checkpoints (envs,
training lengths, seeds) can be lined up:

    python -m benchmarks.check_vs_eval --checkpoint runs/demo/train/best.pt \
        --eval runs/demo/eval/results.json
    python -m benchmarks.check_vs_eval --checkpoint ... --eval ... --plan   # + the planner (slow on CPU)

stdout: one JSON line (bench "check_vs_eval").
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path



def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--eval", required=True, help="the checkpoint's `wm eval` results.json")
    p.add_argument("--label", default=None, help="a name for the row (default: the checkpoint path)")
    p.add_argument("--tasks", type=int, default=100)
    p.add_argument("--goal-offset", type=int, default=25, help="env steps to the goal (eval's default)")
    p.add_argument("--plan", action="store_true", help="also run the planner on every task")
    p.add_argument("--out", default=None, help="keep the check's directory here (default: a temp dir)")
    p.add_argument("--device", default="auto")
    a = p.parse_args(argv)

    from worldmodel.evaluation.check import check
    from worldmodel.evaluation.config import CheckConfig
    from worldmodel.config import load

    ev = json.loads(Path(a.eval).read_text())
    if Path(ev.get("checkpoint", "")).resolve() != Path(a.checkpoint).resolve():
        print(f"note: {a.eval} evaluated {ev.get('checkpoint')!r}, not {a.checkpoint!r}", file=sys.stderr)
    with tempfile.TemporaryDirectory() as tmp:
        out = a.out or str(Path(tmp) / "check")
        res = check(load(CheckConfig, "check", [
            f"checkpoint={a.checkpoint}", f"tasks={a.tasks}", f"goal_offset={a.goal_offset}",
            f"plan={str(a.plan).lower()}", f"out={out}", f"device={a.device}", "overwrite=true",
            "progress=false"]))
    floor = ev.get("random_floor") or {}
    row = {"bench": "check_vs_eval", "label": a.label or a.checkpoint, "env": ev.get("env"),
           "eval": {"successes": ev["successes"], "episodes": ev["episodes"],
                    "random_successes": floor.get("successes"),
                    "p_vs_random": (floor.get("paired") or {}).get("p_value")},
           "check": {k: res[k] for k in ("tasks", "goal_offset", "rollout", "ranking", "landing_steps",
                                         "plan")},
           "checkpoint": a.checkpoint, "eval_results": a.eval}
    for part in row["check"].values():
        if isinstance(part, dict):
            part.pop("note", None)
    print(json.dumps(row))
    return row


if __name__ == "__main__":
    main()
