"""SIGReg ablation: the same recipe trained with sigreg_weight=0 and 0.09 (LeWM's lambda), both
evaluated under the LeWM protocol, with the collapse diagnostics next to the success rate.

    python -m benchmarks.sigreg_ablation --env tworoom --scale cpu            # collects, 2 x train + eval
    python -m benchmarks.sigreg_ablation --env tworoom --data runs/repro/tworoom_cpu/data --steps 300

Without SIGReg nothing stops the encoder from collapsing: the prediction loss can fall toward zero
while the embeddings lose rank. Each row reports best.pt's held-out diagnostics (DIAGNOSTICS) and
the planning success with its Wilson interval and the random floor. stdout: one JSON line per
weight; the whole record goes to --json (atomic write).
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks import recipes as R  # noqa: E402
from worldmodel.io import write_json_atomic  # noqa: E402

DIAGNOSTICS = ("step", "val_pred", "val_nochange", "val_ratio", "val_sigreg", "eff_rank", "std_min",
               "std_mean", "probe_r2")


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--env", required=True, choices=sorted({e for e, _ in R.RECIPES}))
    p.add_argument("--scale", default="cpu", choices=sorted(R.SCALE_LABELS))
    p.add_argument("--weights", type=float, nargs="+", default=[0.0, 0.09], help="sigreg_weight values")
    p.add_argument("--seed", type=int, default=0, help="training seed (the same for every weight)")
    p.add_argument("--data", default=None, help="an existing dataset (default: collect the recipe's)")
    p.add_argument("--out", default=None, help="run directory (default runs/sigreg_ablation/<env>_<scale>)")
    p.add_argument("--json", default=None)
    p.add_argument("--dry-run", action="store_true", help="print the wm commands, run nothing")
    p.add_argument("--quiet", action="store_true")
    R.add_override_args(p)
    return p.parse_args(argv)


def best_metrics(checkpoint: Path) -> dict[str, Any]:
    """The validation metrics stored with a checkpoint (those of the model that is evaluated)."""
    from worldmodel.model.checkpoint import load_checkpoint

    ckpt = load_checkpoint(checkpoint, map_location="cpu")
    metrics = {**((ckpt.get("extra") or {}).get("metrics") or {}), "step": int(ckpt["step"])}
    return {k: metrics.get(k) for k in DIAGNOSTICS}


def main(argv: list[str] | None = None) -> dict[str, Any] | None:
    a = parse(argv)
    recipe, changed = R.recipe_from_args(a)
    out = Path(a.out or f"runs/sigreg_ablation/{R.slug(a.env)}_{a.scale}")
    progress = not a.quiet
    data = Path(a.data) if a.data else out / "data"
    collect = None if a.data else R.collect_args(recipe, data, 0, progress)
    stages = {}
    for w in a.weights:
        run_dir = out / f"sigreg_{w:g}"
        stages[w] = (R.train_args(recipe, data, run_dir / "train", a.seed, progress,
                                  extra=(*a.train_extra, f"sigreg_weight={w}")),
                     R.eval_args(recipe, run_dir / "train" / "best.pt", run_dir / "eval", progress=progress))
    commands = ([R.command("collect", collect)] if collect else []) + [
        R.command(n, args) for tr, ev in stages.values() for n, args in (("train", tr), ("eval", ev))]
    if a.dry_run:
        R.line({"bench": "sigreg_ablation", "dry_run": True, "env": a.env, "scale": recipe.scale_label,
                "weights": a.weights, "commands": commands})
        return None

    if recipe.threads:
        import torch
        torch.set_num_threads(recipe.threads)
    head = {"bench": "sigreg_ablation", "env": a.env, "scale": recipe.scale_label,
            "verified": not changed and not a.data, "overrides": changed, "seed": a.seed,
            "git": R.git_commit(), "machine": R.machine(recipe.device)}
    collect_s = None
    if collect:
        t = time.perf_counter()
        R.run_stage("collect", collect)
        collect_s = round(time.perf_counter() - t, 2)
    dataset = {**R.dataset_size(data), "path": str(data)}
    rows = []
    for w, (tr_args, ev_args) in stages.items():
        tr = R.run_stage("train", tr_args)
        t = time.perf_counter()
        ev = R.run_stage("eval", ev_args)
        row = {"bench": "sigreg_ablation", "env": a.env, "scale": recipe.scale_label, "sigreg_weight": w,
               **best_metrics(Path(tr["out"]) / "best.pt"),
               "final_step": {k: tr.get(k) for k in DIAGNOSTICS},
               "success_rate": ev["success_rate"], "successes": ev["successes"], "ci95": ev["ci95"],
               "episodes": ev["episodes"],
               "random_floor": (ev["random_floor"] or {}).get("success_rate"),
               "train_s": tr.get("train_s"), "eval_s": round(time.perf_counter() - t, 2),
               "commands": [R.command("train", tr_args), R.command("eval", ev_args)]}
        R.line(row)
        rows.append(row)
    record = {**head, "recipe": dataclasses.asdict(recipe), "dataset": dataset, "collect_s": collect_s,
              "commands": commands, "rows": rows,
              "note": "diagnostics from best.pt (the evaluated model); final_step = the last step's"}
    path = Path(a.json or R.ROOT / "benchmarks" / "results" / f"sigreg_ablation_{R.slug(a.env)}_{a.scale}.json")
    write_json_atomic(path, record)
    print(f"sigreg_ablation: wrote {path}", file=sys.stderr)
    return record


if __name__ == "__main__":
    main()
