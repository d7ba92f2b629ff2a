"""GoalEnergy: shapes, agreement with the model's rollout, goal ordering, gradients, misuse errors."""
from __future__ import annotations

import warnings

import pytest
import torch

from worldmodel.model.energy import GoalEnergy
from test_model import pixels, small_model  # noqa: E402  (tests/ is on sys.path under pytest)


def make_energy(model, b: int = 2, h: int = 3, **kw) -> GoalEnergy:
    obs = pixels(b, h, 32, seed=1)
    past = torch.randn(b, h - 1, model.cfg.chunk_dim) if h > 1 else None
    goal = pixels(b, 1, 32, seed=2)[:, 0]
    return GoalEnergy(model, obs, past, goal, **kw)


def test_shapes_and_agreement_with_rollout():
    model = small_model()
    energy = make_energy(model)
    actions = torch.randn(2, 7, 4, 6)
    cost = energy(actions)
    assert cost.shape == (2, 7) and not cost.requires_grad
    obs, past = pixels(2, 3, 32, seed=1), None
    with torch.no_grad():
        z_hist = model.encode(obs)
        past = torch.randn(2, 2, 6)
        energy.set_latent_history(z_hist, past)
        z_hat = model.rollout(z_hist, past, actions)              # (B, S, Hz, D)
        expected = (z_hat - energy.z_goal[:, None, None]).square().sum(-1).sum(-1)   # every chunk (default)
        last = (z_hat[:, :, -1] - energy.z_goal[:, None]).square().sum(-1)            # LeWM's: the last chunk
    torch.testing.assert_close(energy(actions), expected, rtol=1e-5, atol=1e-5)
    lewm = make_energy(model, goal_at="last_chunk")
    lewm.set_latent_history(z_hist, past)
    torch.testing.assert_close(lewm(actions), last, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="goal_at"):
        make_energy(model, goal_at="first_chunk")
    assert make_energy(model, h=1)(actions).shape == (2, 7)        # a single observed frame works
    energy.set_observation(obs.numpy()[:, ::-1][:, ::-1], past.numpy())  # numpy (MPC controller) input
    torch.testing.assert_close(energy(actions), expected, rtol=1e-5, atol=1e-5)


def test_goal_on_the_predicted_path_scores_lowest():
    model = small_model()
    energy = make_energy(model)
    target = torch.randn(2, 1, 4, 6)
    energy = make_energy(model, goal_at="last_chunk")               # the goal is where a plan ends
    with torch.no_grad():
        energy.z_goal = energy.latents(target)[:, 0, -1]          # goal = where `target` leads
    candidates = torch.cat([target, torch.randn(2, 15, 4, 6) * 2], dim=1)
    cost = energy(candidates)
    assert torch.equal(cost.argmin(dim=1), torch.zeros(2, dtype=torch.long))
    assert torch.all(cost[:, 0] <= 1e-6 * cost[:, 1:].min(dim=1).values)  # goal == prediction -> ~0


def test_step_weights_and_gradients_for_gradient_planners():
    model = small_model()
    weights = torch.tensor([0.0, 0.5, 0.0, 1.0])
    energy = make_energy(model, step_weights=weights)
    actions = torch.randn(2, 3, 4, 6)
    with torch.no_grad():
        z_hat = energy.latents(actions)
        expected = (z_hat - energy.z_goal[:, None, None]).square().sum(-1) @ weights
    torch.testing.assert_close(energy(actions), expected, rtol=1e-5, atol=1e-5)
    actions.requires_grad_()
    energy(actions).sum().backward()
    assert actions.grad is not None and actions.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="horizon"):
        energy(torch.randn(2, 3, 5, 6))


def test_misuse_is_refused_clearly():
    model = small_model()
    with pytest.raises(ValueError, match="eval"):
        GoalEnergy(model.train())
    model.eval()
    energy = GoalEnergy(model)
    with pytest.raises(RuntimeError, match="set_goal"):
        energy(torch.randn(1, 2, 3, 6))
    energy.set_goal(pixels(1, 1, 32)[:, 0])
    with pytest.raises(RuntimeError, match="set_observation"):
        energy(torch.randn(1, 2, 3, 6))
    energy.set_observation(pixels(1, 1, 32))
    with pytest.raises(ValueError, match="B=1"):
        energy(torch.randn(2, 2, 3, 6))
    with pytest.raises(ValueError, match="a_hist"):
        energy.set_observation(pixels(1, 3, 32))                  # history without its actions


@pytest.mark.slow
def test_energy_call_is_capturable_without_graph_breaks():
    """torch.compile(fullgraph=True) traces the whole rollout: no data-dependent Python control flow
    and no host syncs (backend="eager": checks the capture without paying for code generation)."""
    model = small_model()
    energy = make_energy(model)
    actions = torch.randn(2, 5, 4, 6)
    compiled = torch.compile(energy.__call__, fullgraph=True, backend="eager")
    with torch.no_grad():
        torch.testing.assert_close(compiled(actions), energy(actions), rtol=1e-6, atol=1e-6)


def test_static_energy_keeps_its_inputs_in_place_per_shape():
    """static=True (what a captured CUDA graph needs): new goals and observations are copied into
    the same tensors, one set per history length, and the costs equal a fresh energy's."""
    model = small_model()
    energy = make_energy(model, static=True)
    actions = torch.randn(2, 5, 4, model.cfg.chunk_dim)
    ptrs = lambda e: [e.z_goal.data_ptr(), e.z_last.data_ptr(),  # noqa: E731
                      *[t.data_ptr() for layer in e.cache for kv in layer for t in kv]]
    first = ptrs(energy)
    obs, past, goal = pixels(2, 3, 32, seed=5), torch.randn(2, 2, model.cfg.chunk_dim), pixels(2, 1, 32, seed=6)[:, 0]
    energy.set_goal(goal)
    energy.set_observation(obs, past)
    assert ptrs(energy) == first                                  # same addresses, new values
    torch.testing.assert_close(energy(actions), GoalEnergy(model, obs, past, goal)(actions))
    energy.set_observation(obs[:, -1:], None)                     # a one-frame history: no KV cache,
    assert ptrs(energy) == first[:2]                              # the goal and last latent in place
    torch.testing.assert_close(energy(actions), GoalEnergy(model, obs[:, -1:], None, goal)(actions))
    energy.set_observation(obs, past)                             # back to three frames: the first set
    assert ptrs(energy) == first
    plain = make_energy(model)
    z = plain.z_goal
    plain.set_goal(goal)
    assert plain.z_goal is not z                                  # the default replaces, as before


def test_bfloat16_planning_copy_scores_like_float32():
    """dtype=torch.bfloat16: the predictor runs as a bf16 copy (the model itself stays float32 and
    its encoder is shared, not copied); costs come back in float32, close to the float32 ones, with
    the same best candidate and gradients for gradient planners; a static energy keeps bf16 buffers."""
    model = small_model()
    ref = make_energy(model, goal_at="last_chunk")                               # the goal is where a plan ends
    energy = make_energy(model, dtype=torch.bfloat16, goal_at="last_chunk")
    assert next(model.predictor.parameters()).dtype == torch.float32             # untouched
    assert energy.planner_model.encoder is model.encoder
    assert next(energy.planner_model.predictor.parameters()).dtype == torch.bfloat16
    target = torch.randn(2, 1, 4, 6)
    with torch.no_grad():
        ref.set_goal_latent(ref.latents(target)[:, 0, -1])                      # goal = where target leads
        energy.set_goal_latent(ref.z_goal)
    actions = torch.cat([target, torch.randn(2, 31, 4, 6)], dim=1)               # (B, S, Hz, chunk)
    cost, exact = energy(actions), ref(actions)
    assert cost.dtype == torch.float32 and cost.shape == (2, 32)
    assert energy.latents(actions).dtype == torch.bfloat16
    rel = (cost[:, 1:] - exact[:, 1:]).abs() / exact[:, 1:]        # this model's latents are tiny
    assert rel.median() < 0.05 and rel.max() < 0.3, rel            # (~0.005): bf16 keeps ~3 digits
    rank = lambda c: c.argsort(1).argsort(1).float()                             # noqa: E731
    assert torch.corrcoef(torch.stack([rank(cost).flatten(), rank(exact).flatten()]))[0, 1] > 0.9
    assert torch.equal(cost.argmin(1), torch.zeros(2, dtype=torch.long))
    assert (cost[:, 0] < 0.05 * exact[:, 1:].min(1).values).all()
    grad_actions = actions.clone().requires_grad_()
    energy(grad_actions).sum().backward()
    assert grad_actions.grad.dtype == torch.float32 and grad_actions.grad.abs().sum() > 0
    obs, past, goal = pixels(2, 3, 32, seed=5), torch.randn(2, 2, 6), pixels(2, 1, 32, seed=6)[:, 0]
    static = GoalEnergy(model, obs, past, goal, static=True, dtype=torch.bfloat16)
    assert static.z_last.dtype == torch.bfloat16 and static.z_goal.dtype == torch.float32
    torch.testing.assert_close(static(actions), GoalEnergy(model, obs, past, goal, dtype=torch.bfloat16)(actions))
    assert make_energy(model, dtype=torch.float32).planner_model is model        # no copy needed
    with pytest.raises(ValueError, match="bfloat16"):
        GoalEnergy(model, dtype=torch.float16)


def test_cpu_bf16_instructions_are_read_from_the_cpu_flags(tmp_path):
    """Whether a bf16 predictor copy pays on this CPU: x86's avx512_bf16 / amx_bf16, Arm's bf16;
    [] when the flags list none (bf16 is emulated there), None when there are no flags to read."""
    from worldmodel.machine import cpu_bf16_instructions

    f = tmp_path / "cpuinfo"
    f.write_text("processor\t: 0\nflags\t\t: fpu avx2 avx512f avx512_bf16 avx512_vnni\n\n"
                 "processor\t: 1\nflags\t\t: fpu avx2 avx512f avx512_bf16 avx512_vnni\n")
    assert cpu_bf16_instructions(f) == ["avx512_bf16"]
    f.write_text("flags\t\t: fpu avx2 avx512f amx_tile amx_bf16 avx512_bf16\n")
    assert cpu_bf16_instructions(f) == ["amx_bf16", "avx512_bf16"]
    f.write_text("flags\t\t: fpu avx2 avx512f avx512_vnni\n")
    assert cpu_bf16_instructions(f) == []
    f.write_text("processor\t: 0\nFeatures\t: fp asimd sve bf16 i8mm\n")
    assert cpu_bf16_instructions(f) == ["bf16"]
    assert cpu_bf16_instructions(tmp_path / "missing") is None


@pytest.mark.slow
def test_compiled_energy_equals_eager_across_observations_and_history_lengths():
    """compile=True (torch.compile, Inductor): the same costs as eager for new observations of the
    same shape and for another history length (another graph), and it says it is compiled."""
    torch._dynamo.reset()
    model = small_model(pred_depth=1)
    obs, past, goal = pixels(2, 3, 32, seed=5), torch.randn(2, 2, 6), pixels(2, 1, 32, seed=6)[:, 0]
    compiled, eager = (GoalEnergy(model, obs, past, goal, compile=c) for c in (True, False))
    assert compiled.compiled and not eager.compiled
    actions = torch.randn(2, 5, 4, 6)
    for o, p in ((obs, past), (obs.flip(1), past.flip(1)), (obs[:, -1:], None)):
        compiled.set_observation(o, p)
        eager.set_observation(o, p)
        torch.testing.assert_close(compiled(actions), eager(actions), rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_compiled_bf16_energy_freezes_its_private_copy_only():
    """compile=True with dtype=bf16 on the CPU: where oneDNN has native bf16, Inductor compiles with
    freezing on, which may take the private copy's weights as constants; the model's own float32
    weights are never frozen (they may change). Compiled and eager bf16 round differently (Inductor
    keeps fused intermediates in float32): eager bf16 is held to float32's costs, compiled bf16 to
    eager's within bf16's budget (5%, what the cross-check lets through), not bit for bit. On a CPU
    without native bf16 (where Inductor's bf16 code gave wrong costs) the energy plans eagerly and
    says why; where a compiled graph disagrees with eager code at its first calls, the energy drops
    it with a warning and returns eager costs. Gradients take eager code on a CPU either way."""
    from worldmodel.model.energy import compile_refusal

    torch._dynamo.reset()
    model = small_model(pred_depth=1)
    torch.nn.init.normal_(model.predictor.adaln.weight, std=0.05)     # candidates' costs differ
    obs, past, goal = pixels(2, 3, 32, seed=5), torch.randn(2, 2, 6), pixels(2, 1, 32, seed=6)[:, 0]
    native = compile_refusal(torch.bfloat16, torch.device("cpu")) is None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        compiled, eager = (GoalEnergy(model, obs, past, goal, compile=c, dtype=torch.bfloat16) for c in (True, False))
    fp32 = GoalEnergy(model, obs, past, goal)
    assert compiled.planner_model is not model
    assert compiled.compiled == compiled._freeze == native
    said = [w for w in caught if "native bf16" in str(w.message)]
    assert (compiled.compile_note is None) == native == (not said), compiled.compile_note
    assert not GoalEnergy(model, obs, past, goal, compile=True)._freeze
    actions = torch.randn(2, 6, 4, 6)
    with torch.no_grad(), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        truth, reference = fp32(actions), eager(actions)
        before = compiled(actions)
        compiled(actions[:, :5])                     # the dynamic-shape graph: both cross-checked
        assert ((reference - truth).abs() <= 0.05 * truth.abs()).all()     # eager bf16 against float32
        # what the cross-check lets through: within bf16's budget of eager bf16 (else eager itself)
        torch.testing.assert_close(before, reference, rtol=0.05, atol=1e-4 * float(reference.abs().max()))
        if not compiled.compiled:                    # refused, or dropped at a cross-check: eager costs
            assert compiled.compile_note and (not native or any("differ" in str(w.message) for w in caught))
            torch.testing.assert_close(before, reference, rtol=0, atol=0)
        else:                                        # packed: the copy is not read again
            weight = compiled.planner_model.predictor.projector.fc2.weight
            saved = weight.clone()
            weight.mul_(3.0)
            torch.testing.assert_close(compiled(actions), before, rtol=0, atol=0)
            weight.copy_(saved)
    a1, a2 = (actions.clone().requires_grad_(True) for _ in range(2))     # gradient planners: eager
    compiled(a1).sum().backward()
    eager(a2).sum().backward()
    torch.testing.assert_close(a1.grad, a2.grad, rtol=0, atol=0)


def test_compile_refusal_plans_bf16_eagerly_on_a_cpu_without_native_bf16(monkeypatch):
    """No bf16 in oneDNN (no AVX-512 or AMX): compile=True with dtype=bf16 warns, names the fix
    and plans with eager bf16; float32 compiles as asked."""
    from worldmodel.model.energy import compile_refusal

    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: False)
    assert "precision=fp32 compile=true" in compile_refusal(torch.bfloat16, torch.device("cpu"))
    assert compile_refusal(torch.float32, torch.device("cpu")) is None
    model = small_model(pred_depth=1)
    with pytest.warns(RuntimeWarning, match="native bf16"):
        energy = GoalEnergy(model, compile=True, dtype=torch.bfloat16)
    assert not energy.compiled and not energy._freeze and energy.compile_note
    assert GoalEnergy(model, compile=True).compiled


def test_compiled_costs_that_disagree_with_eager_ones_switch_the_energy_to_eager(monkeypatch):
    """Each graph's first two calls are checked against eager code: a miscompiled graph (costs off)
    is dropped for good, with a warning, and that call already returns the eager costs; a correct
    one is checked twice per history length, then trusted."""
    compile_ = torch.compile
    monkeypatch.setattr(torch, "compile", lambda fn, **kw: compile_(fn, backend="eager", **kw))
    torch._dynamo.reset()
    model = small_model(pred_depth=1)
    obs, past, goal = pixels(2, 3, 32, seed=5), torch.randn(2, 2, 6), pixels(2, 1, 32, seed=6)[:, 0]
    good, bad, eager = (GoalEnergy(model, obs, past, goal, compile=c) for c in (True, True, False))
    wrong = bad._cost
    bad._cost = lambda a: wrong(a) + 1.0                                  # a miscompiled graph
    actions = torch.randn(2, 5, 4, 6)
    with pytest.warns(RuntimeWarning, match="differ from eager"):
        torch.testing.assert_close(bad(actions), eager(actions))
    assert not bad.compiled and "eager" in bad.compile_note
    torch.testing.assert_close(bad(actions), eager(actions))
    calls = []
    costs = good._costs
    monkeypatch.setattr(good, "_costs", lambda a: calls.append(a.shape[1]) or costs(a))
    for s in (5, 4, 3, 3):
        torch.testing.assert_close(good(actions[:, :s]), eager(actions[:, :s]))
    assert good.compiled and good.compile_note is None and calls == [5, 4]
    good.set_observation(obs[:, -1:], None)                               # another history length
    good(actions)
    assert calls == [5, 4, 5]


def test_compiled_energy_compiles_once_per_history_length_not_per_sample_count(monkeypatch):
    """A sample count that shrinks every call (iCEM's population decay) gets one dynamic-shape graph,
    not one per size (which would hit dynamo's recompile limit and fall back to eager). Traced with
    backend="eager": what is counted is dynamo's compilations, not Inductor's code."""
    from torch._dynamo.utils import counters

    compile_ = torch.compile
    monkeypatch.setattr(torch, "compile", lambda fn, **kw: compile_(fn, backend="eager", **kw))
    torch._dynamo.reset()
    counters.clear()
    model = small_model(pred_depth=1)
    obs, past, goal = pixels(2, 3, 32, seed=5), torch.randn(2, 2, 6), pixels(2, 1, 32, seed=6)[:, 0]
    compiled, eager = (GoalEnergy(model, obs, past, goal, compile=c) for c in (True, False))
    for o, p in ((obs, past), (obs[:, -1:], None)):
        compiled.set_observation(o, p)
        eager.set_observation(o, p)
        for s in (40, 33, 27, 21, 16, 12, 9, 7, 5, 4):                  # icem_cpu-like decay
            actions = torch.randn(2, s, 4, 6)
            torch.testing.assert_close(compiled(actions), eager(actions), rtol=1e-5, atol=1e-6)
    assert counters["frames"]["total"] <= 4, dict(counters["frames"])   # 2 sizes x 2 history lengths at most


# ------------------------------------------------------------------ composable terms (energy_terms.py)
def test_terms_add_their_weighted_costs_to_the_goal_distance():
    from worldmodel.model.energy_terms import ActionMagnitude, ActionRate, Avoid, LatentCost

    model = small_model()
    plain = make_energy(model)
    actions = torch.randn(2, 5, 4, 6)                                   # chunk 6 = frameskip 3 x A 2
    base = plain(actions)
    steps = actions.reshape(2, 5, 12, 2)
    mag = make_energy(model, terms=[ActionMagnitude(0.5)])
    torch.testing.assert_close(mag(actions) - base, 0.5 * steps.square().sum(-1).mean(-1), rtol=1e-4, atol=1e-4)
    rate = make_energy(model, terms=[ActionRate(2.0)])
    want = 2.0 * (steps[:, :, 1:] - steps[:, :, :-1]).square().sum(-1).mean(-1)
    torch.testing.assert_close(rate(actions) - base, want, rtol=1e-4, atol=1e-4)
    with torch.no_grad():
        z = plain.latents(actions)                                        # (B, S, H, D)
    user = make_energy(model, terms=[LatentCost(lambda lat, act: lat[..., 0].sum(-1), 3.0)])
    torch.testing.assert_close(user(actions), base + 3.0 * z[..., 0].sum(-1), rtol=1e-4, atol=1e-3)
    # Avoid: weight x sum over steps and forbidden latents of exp(-mean_sq / radius^2); a forbidden
    # latent on the first candidate's path costs it at least the weight
    forbidden = z[0, 0, -2:]                                              # (2, D)
    avoid = make_energy(model, terms=[Avoid(latents=forbidden, weight=10.0, radius=0.1)])
    d2 = (z[..., None, :] - forbidden).square().mean(-1)                  # (B, S, H, 2)
    torch.testing.assert_close(avoid(actions), base + 10.0 * torch.exp(-d2 / 0.01).sum((-1, -2)),
                               rtol=1e-4, atol=1e-3)
    assert (avoid(actions) - base)[0, 0] >= 10.0 - 1e-3


def test_avoid_encodes_its_images_and_a_term_changes_the_choice():
    from worldmodel.model.energy_terms import Avoid

    model = small_model()
    images = pixels(1, 2, 32, seed=7)[0]                                  # (2, 32, 32, 3)
    term = Avoid(images=images.numpy(), weight=1.0).bind(model)
    with torch.no_grad():
        torch.testing.assert_close(term.latents, model.encode(images))
    energy = make_energy(model)
    actions = torch.randn(2, 6, 4, 6)
    first = energy(actions).argmin(1)
    with torch.no_grad():
        z = energy.latents(actions)
    blocked = make_energy(model, terms=[Avoid(latents=z[0, first[0]], weight=1e6, radius=0.05)])
    assert blocked(actions).argmin(1)[0] != first[0]                      # the chosen path is forbidden now


@pytest.mark.parametrize("make,msg", [
    (lambda T: T.ActionMagnitude(float("nan")), "finite number >= 0"),
    (lambda T: T.ActionRate(-1.0), "finite number >= 0"),
    (lambda T: T.Avoid(), "one of them"),
    (lambda T: T.Avoid(latents=torch.zeros(1, 24), radius=0.0), "radius must be"),
    (lambda T: T.Avoid(latents=torch.full((1, 24), float("nan"))), "NaN or Inf"),
    (lambda T: T.LatentCost("not callable"), "must be callable"),
])
def test_bad_terms_are_refused_with_the_fix(make, msg):
    import worldmodel.model.energy_terms as T

    with pytest.raises((ValueError, TypeError), match=msg):
        make(T)


def test_bad_term_inputs_are_refused_at_bind_and_call():
    from worldmodel.model.energy_terms import Avoid, LatentCost, load_callable

    model = small_model()
    with pytest.raises(ValueError, match="fit_frame"):
        Avoid(images=torch.zeros(1, 16, 16, 3, dtype=torch.uint8)).bind(model)
    with pytest.raises(ValueError, match=r"\(N, 24\)"):
        Avoid(latents=torch.zeros(1, 5)).bind(model)
    energy = make_energy(model, terms=[LatentCost(lambda lat, act: lat.sum(-1))])   # (B, S, H): wrong
    with pytest.raises(ValueError, match="must return costs"):
        energy(torch.randn(2, 3, 4, 6))
    with pytest.raises(ValueError, match="module:function"):
        load_callable("no_colon")


def test_eval_terms_config_builds_the_terms(tmp_path):
    import numpy as np

    from worldmodel.evaluation.config import TermsConfig
    from worldmodel.model.energy_terms import ActionRate, Avoid, LatentCost, terms_from_config

    np.save(tmp_path / "f.npy", np.zeros((2, 32, 32, 3), np.uint8))
    cfg = TermsConfig(rate=0.1, avoid=[str(tmp_path / "f.npy")], cost="math:fsum")
    kinds = [type(t) for t in terms_from_config(cfg)]
    assert kinds == [ActionRate, Avoid, LatentCost]
    assert terms_from_config(TermsConfig()) == []
    with pytest.raises(ValueError, match="terms.action must be a finite weight"):
        TermsConfig(action=-1.0)
    with pytest.raises(ValueError, match="avoid_radius"):
        TermsConfig(avoid_radius=0.0)
