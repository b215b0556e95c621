"""AdaptiveDiffusion: the skip criterion, the model patch, its composition with CutDiffusion (tiny models, CPU)."""
import pytest
import torch

import comfy.patcher_extension

from cutdiff_dev import comfy_runtime as rt
from helpers import CountingModel, assert_skips_reuse_eps, run_cut, sample_traced, schedule

from cutdiff_core.adaptive import (AdaptiveConfig, SkipCriterion, denoised_from_eps,
                                                        eps_from_denoised, third_order_is_small, validate_config)
from cutdiff_core.adaptive_patch import AdaptiveReport, apply_adaptive
from cutdiff_core.cutdiffusion_patch import CutDiffusionConfig, RunReport, apply_cutdiffusion
from comfyui_cutdiffusion.nodes.adaptive import AdaptiveDiffusion

PX = 256             # 32x32 latents: the tiny model's "native" size in these tests
SKIPPY = 0.05        # the tiny random model skips nothing at 0.01 in 20-step runs (it does at 50: BENCHMARKS.md)
# Tests of skipping use samplers whose step is not first order in eps: for euler (and ddim) a skipped
# step that wrongly returned the last denoised value would give the very same numbers as reusing eps
# at the current latent (x - sigma * eps is constant along their step), so no test could tell.


def adaptive(model, report=None, **config):
    return apply_adaptive(model, AdaptiveConfig(**config), report)


class StepRecorder:
    """Which sampling steps reached the UNet, and how many images each: a forward hook, not the pack's code."""

    def __init__(self, model, steps, scheduler="normal"):
        sampling = model.model.model_sampling
        self.timesteps = [float(sampling.timestep(s)) for s in schedule(model, steps, scheduler)[:-1]]
        self.images = [0] * steps
        self._handle = model.model.diffusion_model.register_forward_pre_hook(self._hook, with_kwargs=True)

    def _hook(self, module, args, kwargs):
        t = float((args[1] if len(args) > 1 else kwargs["timesteps"]).reshape(-1)[0])
        step = min(range(len(self.timesteps)), key=lambda i: abs(self.timesteps[i] - t))
        assert abs(self.timesteps[step] - t) < 1e-3, t
        self.images[step] += (args[0] if args else kwargs["x"]).shape[0]

    def skipped_steps(self) -> list[int]:
        return [i for i, n in enumerate(self.images) if n == 0]

    def close(self):
        self._handle.remove()


def longest_run(indices: list[int]) -> int:
    best = run = 0
    for i, index in enumerate(indices):
        run = run + 1 if i and index == indices[i - 1] + 1 else 1
        best = max(best, run)
    return best


# --------------------------------------------------------------------------- the criterion (pure torch)

def test_third_order_estimator():
    assert third_order_is_small((1.0, 1.0, 1.0), 0.0)            # constant speed: zero third difference
    assert not third_order_is_small((1.0, 1.0, 1.1), 0.01)       # |0.1| > 2 * 0.01 * 1
    assert third_order_is_small((1.0, 1.0, 1.015), 0.01)         # |0.015| <= 0.02
    assert not third_order_is_small((1.0, 1.0, 1.0), -1.0)


def trajectory(n, speed=lambda k: 1.0):
    """Latents moving by `speed(k)` per element at step k."""
    x, out = torch.zeros(1, 4, 2, 2), []
    for k in range(n):
        out.append(x.clone())
        x = x + speed(k)
    return out


def test_criterion_warmup_max_skip_and_history():
    crit = SkipCriterion(AdaptiveConfig(threshold=0.01, max_skip_steps=2, warmup_steps=5))
    decisions = [crit.decide(x) for x in trajectory(12)]
    # 0..4 warmup; then at most 2 skips in a row on a perfectly smooth trajectory
    assert decisions == [False] * 5 + [True, True, False, True, True, False, True]

    crit.reset_history()   # a new denoiser: three new differences are needed, warmup is not repeated
    assert [crit.decide(x) for x in trajectory(5)] == [False, False, False, True, True]


def test_criterion_off_cases():
    smooth = trajectory(10)
    for config in (AdaptiveConfig(threshold=0.0), AdaptiveConfig(max_skip_steps=0)):
        crit = SkipCriterion(config)
        assert not any(crit.decide(x) for x in smooth)
    crit = SkipCriterion(AdaptiveConfig(warmup_steps=0))
    assert not any(crit.decide(x, allowed=False) for x in smooth)
    crit = SkipCriterion(AdaptiveConfig(warmup_steps=0))   # a jerky trajectory never skips
    assert not any(crit.decide(x) for x in trajectory(10, lambda k: float(k % 2 + 1)))


def test_skipped_step_recomputes_denoised_at_current_latent():
    gen = torch.Generator().manual_seed(0)
    x0, x1 = torch.randn(2, 4, 8, 8, generator=gen), torch.randn(2, 4, 8, 8, generator=gen)
    sigma0, sigma1 = torch.tensor([3.0, 3.0]), torch.tensor([2.0, 2.0])
    cond0, uncond0 = torch.randn(2, 4, 8, 8, generator=gen), torch.randn(2, 4, 8, 8, generator=gen)
    eps_c, eps_u = eps_from_denoised(x0, cond0, sigma0), eps_from_denoised(x0, uncond0, sigma0)
    torch.testing.assert_close(denoised_from_eps(x0, eps_c, sigma0), cond0)   # round trip

    # The reused prediction moves with the latent: not the old denoised value.
    cond1 = denoised_from_eps(x1, eps_c, sigma1)
    torch.testing.assert_close(cond1, x1 - 2.0 * (x0 - cond0) / 3.0)
    assert not torch.allclose(cond1, cond0)

    # Recomputing CFG from both reused halves = reusing the CFG-combined eps (CutDiffusion stage 1's route).
    scale = 5.0
    uncond1 = denoised_from_eps(x1, eps_u, sigma1)
    cfg0 = uncond0 + (cond0 - uncond0) * scale
    torch.testing.assert_close(uncond1 + (cond1 - uncond1) * scale,
                               denoised_from_eps(x1, eps_from_denoised(x0, cfg0, sigma0), sigma1))


@pytest.mark.parametrize("field,value,needle", [
    ("threshold", 1.5, r"threshold = 1.5 is outside the allowed range \[0.0, 1.0\]"),
    ("threshold", -0.1, "threshold"), ("max_skip_steps", -1, "max_skip_steps"), ("warmup_steps", -2, "warmup_steps"),
    ("start_percent", 1.2, "start_percent"), ("end_percent", -0.5, "end_percent")])
def test_invalid_settings_raise_before_any_work(field, value, needle):
    with pytest.raises(ValueError, match=needle):
        validate_config(AdaptiveConfig(**{field: value}))


def test_node_rejects_invalid_settings(model):
    with pytest.raises(ValueError, match="start_percent = 0.8 must not be greater than end_percent = 0.2"):
        AdaptiveDiffusion.execute(model, 0.01, 4, 4, 0.8, 0.2)
    with pytest.raises(ValueError, match="warmup_steps"):
        AdaptiveDiffusion.execute(model, 0.01, 4, -1, 0.0, 1.0)


# --------------------------------------------------------------------------- the patch on ComfyUI's KSampler

@pytest.mark.parametrize("sampler", ["euler", "dpmpp_2m", "ddim", "uni_pc"])   # heun: test_heun_never_skips
def test_threshold_zero_equals_unpatched_ksampler(model, conds, sampler):
    latent = rt.empty_latent(PX, PX)
    expected = rt.ksampler(model, 5, 6, 5.0, sampler, "normal", *conds, latent)
    report = AdaptiveReport()
    got = rt.ksampler(adaptive(model, report, threshold=0.0, warmup_steps=0), 5, 6, 5.0, sampler, "normal",
                      *conds, latent)
    assert torch.equal(got, expected)
    assert (report.evaluated, report.skipped) == (6, 0)


def test_larger_threshold_skips_and_counts_match_the_model(model, conds):
    steps, report = 24, AdaptiveReport()
    patched = adaptive(model, report, threshold=SKIPPY, max_skip_steps=3, warmup_steps=6)
    recorder, counter = StepRecorder(model, steps), CountingModel(model)
    try:
        got, trace = sample_traced(patched, 2, steps, 5.0, "dpmpp_2m", "normal", conds, rt.empty_latent(PX, PX))
    finally:
        recorder.close()
        counter.close()
    skipped = recorder.skipped_steps()
    assert report.skipped > 0 and skipped == report.skipped_at
    assert report.evaluated + report.skipped == steps
    assert counter.images == 2 * report.evaluated           # cond + uncond per evaluation
    assert min(skipped) >= 6 and longest_run(skipped) <= 3  # warmup, max_skip_steps
    # What the sampler got on each skipped step: the last eps at the current latent and sigma.
    assert_skips_reuse_eps(trace, schedule(model, steps), skipped)
    expected = rt.ksampler(model, 2, steps, 5.0, "dpmpp_2m", "normal", *conds, rt.empty_latent(PX, PX))
    rmse = float((got - expected).pow(2).mean().sqrt())
    assert 0 < rmse < 0.5 * float(expected.std())

    # A second run of the same patched model (KSampler's own path) starts afresh: nothing carried over.
    first_skips = list(report.skipped_at)
    assert torch.equal(got, rt.ksampler(patched, 2, steps, 5.0, "dpmpp_2m", "normal", *conds,
                                        rt.empty_latent(PX, PX)))
    assert report.skipped_at == first_skips


def test_skipping_only_inside_the_percent_range(model, conds):
    steps, report = 24, AdaptiveReport()
    patched = adaptive(model, report, threshold=0.5, warmup_steps=0, start_percent=0.5, end_percent=0.9)
    _, trace = sample_traced(patched, 2, steps, 5.0, "euler_ancestral", "normal", conds, rt.empty_latent(PX, PX))
    sampling, sigmas = model.model.model_sampling, schedule(model, steps)
    hi, lo = sampling.percent_to_sigma(0.5), sampling.percent_to_sigma(0.9)
    assert report.skipped_at
    assert all(lo < float(sigmas[i]) <= hi for i in report.skipped_at)
    assert_skips_reuse_eps(trace, sigmas, report.skipped_at)


def test_skipped_step_reuses_both_cfg_halves_at_the_current_latent(model, conds):
    # A post-CFG hook sees what CFG was given: on a skipped step, eps of cond and uncond
    # are the last evaluated step's, taken at the current latent and sigma.
    seen = []

    def post_cfg(args):
        x, sigma = args["input"], args["sigma"].reshape(-1, 1, 1, 1)
        seen.append(((x - args["cond_denoised"]) / sigma, (x - args["uncond_denoised"]) / sigma))
        return args["denoised"]

    base = model.clone()
    base.set_model_sampler_post_cfg_function(post_cfg)
    report = AdaptiveReport()
    rt.ksampler(adaptive(base, report, threshold=SKIPPY, warmup_steps=4), 2, 20, 5.0, "dpmpp_2m", "normal", *conds,
                rt.empty_latent(PX, PX))
    assert len(seen) == 20 and report.skipped_at
    for step in report.skipped_at:
        last = max(i for i in range(step) if i not in report.skipped_at)
        for now, then in zip(seen[step], seen[last]):
            torch.testing.assert_close(now, then, atol=1e-4, rtol=1e-4)


def test_cfg_one_skips_with_the_absent_uncond(model, conds):
    report = AdaptiveReport()
    with CountingModel(model) as counter:
        _, trace = sample_traced(adaptive(model, report, threshold=SKIPPY), 2, 20, 1.0, "lms", "normal", conds,
                                 rt.empty_latent(PX, PX))
    assert report.skipped > 0 and counter.images == report.evaluated   # no uncond at cfg 1
    assert_skips_reuse_eps(trace, schedule(model, 20), report.skipped_at)


def test_heun_never_skips(model, conds):
    report = AdaptiveReport()
    latent = rt.empty_latent(PX, PX)
    got = rt.ksampler(adaptive(model, report, threshold=1.0, warmup_steps=0), 2, 8, 5.0, "heun", "normal", *conds,
                      latent)
    assert report.multi_evaluation_sampler and (report.evaluated, report.skipped) == (15, 0)
    assert torch.equal(got, rt.ksampler(model, 2, 8, 5.0, "heun", "normal", *conds, latent))


def test_two_patched_models_in_one_graph_keep_separate_state():
    def sampler(model_node):
        return {"class_type": "KSampler", "inputs": {
            "model": [model_node, 0], "positive": ["c", 0], "negative": ["c", 1], "latent_image": ["l", 0],
            "seed": 4, "steps": 16, "cfg": 5.0, "sampler_name": "dpmpp_2m", "scheduler": "normal", "denoise": 1.0}}

    def adaptive_node(threshold):
        return {"class_type": "AdaptiveDiffusion", "inputs": {
            "model": ["m", 0], "threshold": threshold, "max_skip_steps": 4, "warmup_steps": 4,
            "start_percent": 0.0, "end_percent": 1.0}}

    prompt = {
        "m": {"class_type": rt.TINY_MODEL_NODE, "inputs": {"kind": "sdxl", "seed": 0}},
        "c": {"class_type": rt.TINY_CONDS_NODE, "inputs": {"seed": 3, "batch": 1, "tokens": 8, "sdxl": True}},
        "l": {"class_type": "EmptyLatentImage", "inputs": {"width": PX, "height": PX, "batch_size": 1}},
        "a0": adaptive_node(0.0), "a1": adaptive_node(SKIPPY),
        "k0": sampler("a0"), "k1": sampler("a1"), "k": sampler("m"),
        "s0": {"class_type": "SaveLatent", "inputs": {"samples": ["k0", 0], "filename_prefix": "adaptive/off"}},
        "s1": {"class_type": "SaveLatent", "inputs": {"samples": ["k1", 0], "filename_prefix": "adaptive/on"}},
        "s": {"class_type": "SaveLatent", "inputs": {"samples": ["k", 0], "filename_prefix": "adaptive/plain"}},
    }
    result = rt.run_prompt(prompt)
    reports = {data["node"]: data for event, data in result["events"] if event == "cutdiffusion.adaptive"}
    assert reports["a0"] == {"node": "a0", "evaluated": 16, "skipped": 0}
    assert reports["a1"]["skipped"] > 0 and reports["a1"]["evaluated"] + reports["a1"]["skipped"] == 16
    (off,), (on,), (plain,) = (rt.saved_latents(result, s) for s in ("s0", "s1", "s"))
    assert torch.equal(off, plain) and not torch.equal(on, plain)

    # Same figures and samples as a direct call on the same model: nothing leaked between the two
    # samplers; and that run's skipped steps reused eps at the current latent.
    report = AdaptiveReport()
    direct_model = rt.tiny_sdxl(seed=0)
    direct, trace = sample_traced(adaptive(direct_model, report, threshold=SKIPPY), 4, 16, 5.0, "dpmpp_2m", "normal",
                                  rt.tiny_conds(seed=3), rt.empty_latent(PX, PX))
    assert (report.evaluated, report.skipped) == (reports["a1"]["evaluated"], reports["a1"]["skipped"])
    assert torch.equal(on, direct)
    assert_skips_reuse_eps(trace, schedule(direct_model, 16), report.skipped_at)


# --------------------------------------------------------------------------- with CutDiffusion

def wrapper_keys(patched, kind):
    return list(patched.wrappers[kind].keys())


@pytest.mark.parametrize("adaptive_first", [True, False])
def test_wrapper_order_keeps_cutdiffusion_inside(model, adaptive_first):
    cut = CutDiffusionConfig(layout="patches", patch_size=PX)
    if adaptive_first:
        patched = apply_cutdiffusion(adaptive(model), cut)
    else:
        patched = adaptive(apply_cutdiffusion(model, cut))
    for kind in (comfy.patcher_extension.WrappersMP.OUTER_SAMPLE, comfy.patcher_extension.WrappersMP.SAMPLER_SAMPLE,
                 comfy.patcher_extension.WrappersMP.PREDICT_NOISE, comfy.patcher_extension.WrappersMP.CALC_COND_BATCH):
        assert wrapper_keys(patched, kind) == ["adaptivediffusion", "cutdiffusion"]
    assert not model.wrappers.get(comfy.patcher_extension.WrappersMP.PREDICT_NOISE)   # the input is untouched


def test_threshold_zero_with_cutdiffusion_equals_cutdiffusion(model, conds):
    latent = rt.empty_latent(2 * PX, PX)
    expected, _ = run_cut(model, latent, steps=6, conds=conds, patch_size=PX)
    got, _ = run_cut(adaptive(model, threshold=0.0, warmup_steps=0), latent, steps=6, conds=conds, patch_size=PX)
    assert torch.equal(got, expected)


def test_cutdiffusion_skips_whole_steps_and_resets_at_the_split(model, conds):
    steps, latent = 14, rt.empty_latent(2 * PX, PX)
    report, cut_report = AdaptiveReport(), RunReport()
    patched = adaptive(model, report, threshold=0.3, max_skip_steps=3, warmup_steps=2)
    recorder = StepRecorder(model, steps)
    try:
        got, trace = sample_traced(apply_cutdiffusion(patched, CutDiffusionConfig(layout="patches", patch_size=PX), cut_report), 1,
                                   steps, 5.0, "dpmpp_2m", "normal", conds, latent)
    finally:
        recorder.close()
    t1, n = cut_report.plan.stage1_steps, cut_report.plan.grid.n
    per_step = [n] * t1 + cut_report.stage2_windows_per_step   # patches, then windows
    assert n == 2 and min(per_step[t1:]) > n and 2 <= t1 <= steps - 4
    # Whole steps: a step reaches the model with every patch / window (x2 for CFG) or not at all.
    for step, images in enumerate(recorder.images):
        assert images in (0, 2 * per_step[step]), (step, images)
    skipped = recorder.skipped_steps()
    assert skipped == report.skipped_at
    assert any(s < t1 for s in skipped) and any(s >= t1 for s in skipped)
    # The cache and the trajectory restart at the split: stage 2 needs three new differences.
    assert not set(skipped) & {t1, t1 + 1, t1 + 2}
    assert cut_report.stage1_evaluations == sum(per_step[s] for s in range(t1) if s not in skipped)
    assert cut_report.stage2_evaluations == sum(per_step[s] for s in range(t1, steps) if s not in skipped)
    # Both routes recompute at the current latent and sigma: stage 1 from the CFG-combined eps of
    # the last evaluation, stage 2 from each CFG half's cached eps in the full frame.
    sigmas = schedule(model, steps)
    assert_skips_reuse_eps(trace, sigmas, [s for s in skipped if s < t1])
    assert_skips_reuse_eps(trace, sigmas, [s for s in skipped if s >= t1])

    # The other order (CutDiffusion node, then AdaptiveDiffusion, then KSampler) is the same computation.
    other = adaptive(apply_cutdiffusion(model, CutDiffusionConfig(layout="patches", patch_size=PX)), threshold=0.3, max_skip_steps=3,
                     warmup_steps=2)
    assert torch.equal(got, rt.ksampler(other, 1, steps, 5.0, "dpmpp_2m", "normal", *conds, latent))
