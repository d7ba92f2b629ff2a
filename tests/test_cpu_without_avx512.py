"""The bf16 and compiled-planning tests once more, as on a CPU without AVX-512 (the 2-core CI machines
change from day to day: some have AVX512-BF16, some no AVX-512 at all). oneDNN is held to AVX2
(`ONEDNN_MAX_CPU_ISA`, so it reports no native bf16 and `compile_refusal` plans bf16 eagerly) and
ATen and Inductor emit AVX2 code (`ATEN_CPU_CAPABILITY`), in a child pytest with its own Inductor
cache (kernels cached for this CPU's ISA must not be reused)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from worldmodel.model.energy import compile_refusal

TESTS = Path(__file__).parent
SELECTED = [f"{TESTS / 'test_energy.py'}", "-k", "bf16 or compile",
            f"{TESTS / 'test_eval.py'}::test_eval_cli_other_planner_and_refusals"]


@pytest.mark.slow
@pytest.mark.skipif(compile_refusal(torch.bfloat16, torch.device("cpu")) is not None,
                    reason="this CPU has no native bf16: the suite itself runs these tests as such a CPU would")
def test_bf16_and_compiled_planning_hold_on_a_cpu_without_avx512(tmp_path):
    env = {**os.environ, "ONEDNN_MAX_CPU_ISA": "AVX2", "ATEN_CPU_CAPABILITY": "avx2",
           "TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "inductor"), "MUJOCO_GL": os.environ.get("MUJOCO_GL", "egl")}
    probe = subprocess.run([sys.executable, "-c", "import torch; print(torch.ops.mkldnn._is_mkldnn_bf16_supported())"],
                           env=env, capture_output=True, text=True, check=True)
    assert probe.stdout.strip() == "False", "ONEDNN_MAX_CPU_ISA=AVX2 did not hide native bf16"
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *SELECTED],
                         env=env, capture_output=True, text=True, cwd=TESTS.parent)
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
    assert " passed" in run.stdout and " failed" not in run.stdout, run.stdout[-2000:]
