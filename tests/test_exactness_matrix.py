"""Native size = one patch and one window: CutDiffusion's output is KSampler's bit for bit (spec 3.5/3.7),
for the schedulers and samplers beyond test_sampler.py's euler..dpm_2 x normal/karras matrix.

Not the full cross product (each case is two sampling runs on the CPU): every new scheduler with
euler, every new sampler with normal, and a few crossings of new with new. Each case compares with
KSampler run in the same process on the same ComfyUI, never with stored numbers (ancestral/SDE noise
changed between ComfyUI versions).
"""
import pytest
import torch

import comfy.samplers

from cutdiff_dev import comfy_runtime as rt
from helpers import CountingModel, run_cut

PATCH = 256          # px: the tiny tests' "native" size (32 latent px)

NEW_SCHEDULERS = ["exponential", "sgm_uniform", "simple", "beta"]
NEW_SAMPLERS = ["res_multistep", "deis", "ipndm"]
CASES = ([("euler", scheduler) for scheduler in NEW_SCHEDULERS]
         + [(sampler, "normal") for sampler in NEW_SAMPLERS]
         + [("deis", "beta"), ("res_multistep", "exponential"), ("ipndm", "sgm_uniform"),
            ("dpmpp_2m_sde", "simple"), ("euler_ancestral", "beta")])


@pytest.mark.parametrize("sampler, scheduler", CASES)
def test_native_size_equals_ksampler(model, conds, sampler, scheduler):
    if sampler not in comfy.samplers.KSampler.SAMPLERS:
        pytest.skip(f"sampler {sampler!r} is not in this ComfyUI")
    if scheduler not in comfy.samplers.KSampler.SCHEDULERS:
        pytest.skip(f"scheduler {scheduler!r} is not in this ComfyUI")
    latent = rt.empty_latent(PATCH, PATCH)
    expected = rt.ksampler(model, 7, 5, 4.5, sampler, scheduler, *conds, latent)
    with CountingModel(model) as counter:
        got, report = run_cut(model, latent, seed=7, steps=5, cfg=4.5, sampler=sampler, scheduler=scheduler,
                              conds=conds, patch_size=PATCH)
    # The patch was really in the run (it planned it and the model saw its batches), as one patch
    # and one window: the denoiser is the plain model.
    assert report.plan is not None and report.plan.grid.n == 1 and report.plan.layout.count == 1
    assert report.plan.steps == 5 and counter.images > 0
    assert report.stage1_evaluations + report.stage2_evaluations == counter.images // 2   # per CFG half
    assert torch.equal(got, expected), (got - expected).abs().max()
