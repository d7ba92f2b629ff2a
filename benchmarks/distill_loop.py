"""The distilled policy in the real-time loop: `benchmarks.control_loop --distilled`, the energy holding a
`wm distill` policy, so `--planner policy` (one forward pass per decision) or a seeded preset
(`cem_seeded`) runs through `ControlLoop` at the env's own rate.

    python -m benchmarks.distill_loop --distilled runs/distill/reacher_seed0/policy.pt \
        --checkpoint runs/repro/reacher_cpu_cnn/seed0/train/best.pt --planner policy \
        --receding-horizon 1 --async-lead -1 --episodes 50 \
        --reference runs/distill/reacher_seed0/eval_policy/results.json

Every other option is control_loop's (--hz, --async-lead, --time-budget, --reference, ...).
stdout: control_loop's JSON line with "distilled" added (printed once more with it); --json appends
that line to a file.
"""
from __future__ import annotations

import argparse
from typing import Any

from benchmarks.recipes import emit_line


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--distilled", required=True, help="policy.pt written by `wm distill` for --checkpoint")
    p.add_argument("--json", default=None, help="also append the JSON line to this file")
    a, rest = p.parse_known_args(argv)
    from benchmarks import control_loop

    out = {**control_loop.main([*rest, "--distilled", a.distilled]), "bench": "distill_loop"}
    emit_line(out, a.json)
    return out


if __name__ == "__main__":
    main()
