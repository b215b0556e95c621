"""CutDiffusion on DiT / flow-matching models (issue 15), on tiny random models built from
ComfyUI's own classes (cutdiff_dev/tiny_dit.py): the SDXL guarantees of test_sampler.py, per family.

- native size: the output is KSampler's, bit for bit;
- stage_split 0, no jitter: plain MultiDiffusion, against an independent loop that asks
  ComfyUI's own `sampling_function` for each window crop's denoised prediction;
- model evaluations counted through the diffusion model equal the plan;
- the stage split is a noise level of the shifted flow schedule (Flux: ModelSamplingFlux's shift);
- every patch and window is a native-size image to the model: the same positional ids
  (Flux RoPE ids, SD3's cropped learned position table) as a native-size call;
- Flux guidance and the pooled vectors reach every patch and window, with the right image.
"""
import math
import types

import pytest
import torch

import comfy.model_management
import comfy.sample
import comfy.sampler_helpers
import comfy.samplers
import comfy.supported_models

from cutdiff_dev import comfy_runtime as rt
from cutdiff_dev import tiny_dit as td
from helpers import CountingModel, reference_windows, run_cut, schedule

from cutdiff_core import cutdiffusion_patch

PATCH = 256          # px: the tiny models' "native" size (32 latent px; 16x16 tokens after 2x2 patchify)
NATIVE = PATCH // 8
FLUX_GUIDANCE, FLUX_NEG_GUIDANCE = 3.5, 2.0


@pytest.fixture(scope="module")
def flux_base():
    return td.tiny_flux(seed=0)


@pytest.fixture(scope="module")
def sd3_base():
    return td.tiny_sd3(seed=0)


def _flux_conds(batch=1, seed=3):
    pos, _ = td.flux_conds(seed=seed, batch=batch, guidance=FLUX_GUIDANCE)
    _, neg = td.flux_conds(seed=seed + 1, batch=batch, guidance=FLUX_NEG_GUIDANCE)
    return pos, neg


@pytest.fixture(params=["flux", "sd3"])
def family(request, flux_base, sd3_base):
    """(name, model, conds(batch)): Flux with the shift ModelSamplingFlux sets at 1024 px."""
    if request.param == "flux":
        return types.SimpleNamespace(name="flux", model=td.flux_shift(flux_base, 1024, 1024), conds=_flux_conds)
    return types.SimpleNamespace(name="sd3", model=sd3_base, conds=lambda batch=1, seed=3: td.sd3_conds(seed, batch))


# --------------------------------------------------------------------------- native size = KSampler

@pytest.mark.parametrize("sampler, scheduler, cfg", [("euler", "simple", 1.0), ("dpmpp_2m", "normal", 3.5)])
def test_native_size_equals_ksampler(family, sampler, scheduler, cfg):
    latent = td.empty_latent(PATCH, PATCH, batch=2)
    conds = family.conds(batch=2)
    expected = rt.ksampler(family.model, 7, 4, cfg, sampler, scheduler, *conds, latent)
    got, report = run_cut(family.model, latent, seed=7, steps=4, cfg=cfg, sampler=sampler, scheduler=scheduler,
                          conds=conds, patch_size=PATCH)
    assert report.plan.grid.n == 1 and report.plan.layout.count == 1
    assert float(expected.std()) > 0.05
    assert torch.equal(got, expected), (got - expected).abs().max()


# --------------------------------------------------------------------------- stage_split 0 = MultiDiffusion

@torch.no_grad()
def _multidiffusion_reference(model, latent, seed, steps, scheduler, cfg, conds, native, stride):
    """MultiDiffusion with Euler steps, each window crop denoised by ComfyUI's own CFG
    (comfy.samplers.sampling_function) with conds processed for the crop (process_conds),
    the denoised predictions averaged per pixel. Never through the pack."""
    base = model.model
    samples = latent["samples"]
    _, c, height, width = samples.shape
    sigmas = schedule(model, steps, scheduler)
    ms = model.get_model_object("model_sampling")
    noise = comfy.sample.prepare_noise(samples, seed)
    x = ms.noise_scaling(sigmas[0], noise, torch.zeros_like(noise))
    wy, wx = min(native, height), min(native, width)
    windows = [(y0, x0) for y0 in reference_windows(height, native, stride)
               for x0 in reference_windows(width, native, stride)]
    pos, neg = conds
    window_noise = torch.zeros(samples.shape[0], c, wy, wx)
    processed = comfy.samplers.process_conds(
        base, window_noise, {"positive": comfy.sampler_helpers.convert_cond(pos),
                             "negative": comfy.sampler_helpers.convert_cond(neg)},
        "cpu", latent_image=torch.zeros_like(window_noise), seed=seed)
    comfy.model_management.load_models_gpu([model])   # ComfyUI's own lifecycle around model calls
    model.pre_run()
    try:
        x = _multidiffusion_steps(base, x, sigmas, windows, (wy, wx), processed, cfg, seed)
    finally:
        model.cleanup()
    return base.process_latent_out(ms.inverse_noise_scaling(sigmas[-1], x))


def _multidiffusion_steps(base, x, sigmas, windows, window_hw, processed, cfg, seed):
    wy, wx = window_hw
    for step in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[step], sigmas[step + 1]
        total, count = torch.zeros_like(x), torch.zeros_like(x)
        for y0, x0 in windows:
            crop = x[:, :, y0:y0 + wy, x0:x0 + wx]
            den = comfy.samplers.sampling_function(base, crop, sigma.expand(crop.shape[0]), processed["negative"],
                                                   processed["positive"], cfg, model_options={}, seed=seed)
            total[:, :, y0:y0 + wy, x0:x0 + wx] += den
            count[:, :, y0:y0 + wy, x0:x0 + wx] += 1
        denoised = total / count
        x = x + (x - denoised) / sigma * (sigma_next - sigma)
    return x


def test_multidiffusion_special_case_matches_reference(family):
    latent = td.empty_latent(2 * PATCH, 3 * PATCH // 2, batch=2)   # 48x64 latent: 2x3 windows, no padding
    conds = family.conds(batch=2)
    expected = _multidiffusion_reference(family.model, latent, 3, 3, "simple", 3.0, conds, NATIVE, NATIVE // 2)
    got, report = run_cut(family.model, latent, seed=3, steps=3, cfg=3.0, scheduler="simple", conds=conds,
                          patch_size=PATCH, stage_split=0.0, window_jitter=False)
    assert report.plan.stage1_steps == 0 and report.plan.layout.count == 6
    assert got.shape == expected.shape == (2, 16, 48, 64)
    scale = float(expected.abs().max())
    torch.testing.assert_close(got, expected, atol=1e-5 * scale, rtol=1e-4)


# --------------------------------------------------------------------------- evaluations = plan

@pytest.mark.parametrize("w_px, h_px", [(2 * PATCH, 2 * PATCH), (408, 264)])   # 2x2 native; 51x33 latent, padded
def test_model_evaluations_match_the_plan(family, w_px, h_px):
    latent = td.empty_latent(w_px, h_px, batch=2)
    with CountingModel(family.model) as counter:
        out, report = run_cut(family.model, latent, seed=1, steps=4, cfg=3.0, scheduler="simple",
                              conds=family.conds(batch=2), patch_size=PATCH, window_batch_size=4)
    plan = report.plan
    # The plan, recomputed independently of it: ceil-grid patches; windows over the padded latent.
    rows, cols = math.ceil(h_px / 8 / NATIVE), math.ceil(w_px / 8 / NATIVE)
    padded_h, padded_w = rows * math.ceil(h_px / 8 / rows), cols * math.ceil(w_px / 8 / cols)
    windows = len(reference_windows(padded_h, NATIVE, NATIVE // 2)) * len(reference_windows(padded_w, NATIVE,
                                                                                            NATIVE // 2))
    t1 = plan.stage1_steps
    assert 0 < t1 < 4 and (plan.grid.n, plan.layout.count) == (rows * cols, windows)
    assert counter.images == plan.model_evaluations(batch=2) == 2 * 2 * (t1 * rows * cols + (4 - t1) * windows)
    assert max(counter.batches) <= 4 * 2 * 2        # window_batch_size windows x batch x CFG halves
    assert out.shape == (2, 16, h_px // 8, w_px // 8)


# --------------------------------------------------------------------------- the split under a shifted schedule

@pytest.mark.parametrize("scheduler", ["simple", "beta", "normal"])
def test_flux_stage_split_is_a_noise_level_of_the_shifted_schedule(flux_base, scheduler):
    """With ModelSamplingFlux's shift for 2048x2048 px, stage 1 = the steps whose starting sigma is
    above percent_to_sigma(stage_split) of the *shifted* model sampling: ComfyUI's percent is model
    time, so on `simple` (uniform in model time) stage_split 0.5 is half the steps, however large the
    shift, and the split sigma is the shifted schedule's, e^mu / (e^mu + 1) at 0.5 (~0.96), not 0.5."""
    model = td.flux_shift(flux_base, 2048, 2048)
    ms = model.get_model_object("model_sampling")
    mu = td.flux_node_shift(2048, 2048)
    assert math.isclose(float(ms.shift), mu, rel_tol=1e-6)
    threshold = float(ms.percent_to_sigma(0.5))
    assert math.isclose(threshold, math.exp(mu) / (math.exp(mu) + 1.0), rel_tol=1e-5)
    steps = 6
    sigmas = schedule(model, steps, scheduler)
    expected_t1 = sum(1 for s in sigmas[:-1] if float(s) > threshold)
    if scheduler == "simple":
        assert expected_t1 == steps // 2
    latent = td.empty_latent(2 * PATCH, 2 * PATCH)
    with CountingModel(model) as counter:
        _, report = run_cut(model, latent, seed=2, steps=steps, cfg=3.0, scheduler=scheduler, conds=_flux_conds(),
                            patch_size=PATCH, window_batch_size=16)
    assert report.plan.stage1_steps == min(max(expected_t1, 1), steps - 1)
    # The model saw it: stage-1 calls carry the 4-patch stack, stage-2 ones the 9 windows (x2 CFG).
    assert counter.batches == [8] * report.plan.stage1_steps + [18] * (steps - report.plan.stage1_steps)


# --------------------------------------------------------------------------- positional encodings

class _PositionRecorder:
    """What positional encoding each diffusion-model call builds, per image in the call.
    Flux: the RoPE ids fed to pe_embedder (text ids, then image ids from the model's own
    process_img). SD3: the cropped learned position table (cropped_pos_embed)."""

    def __init__(self, model, name):
        self.per_image: list[torch.Tensor] = []
        dm = model.model.diffusion_model
        if name == "flux":
            self._handle = dm.pe_embedder.register_forward_pre_hook(self._flux)
            self._undo = self._handle.remove
        else:
            original = dm.cropped_pos_embed

            def cropped(hw, device=None):
                out = original(hw, device=device)
                self.per_image.append(out[0].detach().clone())
                return out
            dm.cropped_pos_embed = cropped
            self._undo = lambda: delattr(dm, "cropped_pos_embed")

    def _flux(self, module, args):
        ids = args[0]
        self.per_image.extend(ids[i].detach().clone() for i in range(ids.shape[0]))

    def close(self):
        self._undo()


def test_every_patch_and_window_has_native_positions(family):
    with torch.inference_mode():
        rec = _PositionRecorder(family.model, family.name)
        try:
            rt.ksampler(family.model, 1, 1, 3.0, "euler", "simple", *family.conds(), td.empty_latent(PATCH, PATCH))
        finally:
            rec.close()
    native = rec.per_image[0]
    assert all(torch.equal(p, native) for p in rec.per_image)
    if family.name == "flux":
        assert native.shape[0] == 6 + (NATIVE // 2) ** 2     # text tokens + 16x16 image tokens

    # 2x3 native area with jittered windows: 6 patches in stage 1, 15 windows in stage 2.
    rec = _PositionRecorder(family.model, family.name)
    try:
        with CountingModel(family.model) as counter:
            _, report = run_cut(family.model, td.empty_latent(3 * PATCH, 2 * PATCH), seed=5, steps=2, cfg=3.0,
                                scheduler="simple", conds=family.conds(), patch_size=PATCH, window_batch_size=5)
    finally:
        rec.close()
    assert report.plan.stage1_steps == 1 and (report.plan.grid.n, report.plan.layout.count) == (6, 15)
    calls = rec.per_image
    # Flux: one id set per image in every call; SD3: one position table per call (shared by its batch).
    assert len(calls) == (report.plan.model_evaluations() if family.name == "flux" else len(counter.batches))
    for i, pos in enumerate(calls):
        assert torch.equal(pos, native), f"model input {i}: positions differ from a native-size call"


# --------------------------------------------------------------------------- pooled vectors and guidance

class _CondRecorder:
    """y (pooled) and guidance rows of every diffusion-model call."""

    def __init__(self, model):
        self.calls: list[tuple] = []
        self._handle = model.model.diffusion_model.register_forward_pre_hook(self._hook, with_kwargs=True)

    def _hook(self, module, args, kwargs):
        x = args[0] if args else kwargs["x"]
        y, g = kwargs.get("y"), kwargs.get("guidance")
        self.calls.append((x.shape[0], y.detach().clone(), None if g is None else g.detach().clone()))

    def close(self):
        self._handle.remove()


@pytest.mark.parametrize("stage_split", [0.5, 0.0])
def test_pooled_and_guidance_reach_every_patch_and_window(family, stage_split):
    batch = 2
    pos, neg = family.conds(batch=batch)
    rec = _CondRecorder(family.model)
    try:
        _, report = run_cut(family.model, td.empty_latent(2 * PATCH, 2 * PATCH, batch=batch), seed=4, steps=3,
                            cfg=3.0, scheduler="simple", conds=(pos, neg), patch_size=PATCH, window_batch_size=3)
    finally:
        rec.close()
    # (pooled row, guidance) of each CFG half and image; ComfyUI puts a call's halves one after another,
    # and within a half the patch / window stack is image-minor: row r is image r % batch.
    halves = [(pos[0][1]["pooled_output"], FLUX_GUIDANCE), (neg[0][1]["pooled_output"], FLUX_NEG_GUIDANCE)]
    seen = {(h, b): 0 for h in range(2) for b in range(batch)}
    for rows, y, guidance in rec.calls:
        assert y.shape[0] == rows
        assert (guidance is not None) == (family.name == "flux")
        r = 0
        while r < rows:
            half = next(h for h, (pooled, _) in enumerate(halves) if torch.equal(y[r], pooled[0]))
            block = 0
            while r < rows and torch.equal(y[r], halves[half][0][block % batch]):
                if guidance is not None:
                    assert float(guidance[r]) == halves[half][1], (r, float(guidance[r]))
                seen[(half, block % batch)] += 1
                r, block = r + 1, block + 1
            assert block % batch == 0, "a half that does not hold whole sets of the batch's images"
    per_pair = report.plan.model_evaluations(batch=1, cfg_batches=1)
    assert seen == {key: per_pair for key in seen}


# --------------------------------------------------------------------------- patch_size 0: native sizes

NATIVE_PX = {   # ComfyUI config class -> training size in px (see cutdiffusion_patch._NATIVE_PX_BY_CONFIG)
    "Flux": 1024, "FluxSchnell": 1024, "SD3": 1024, "Lumina2": 1024, "ZImage": 1024, "QwenImage": 1328,
    "HiDream": 1024, "Chroma": 1024, "AuraFlow": 1024,
}


def test_tiny_dit_models_know_their_native_size(flux_base, sd3_base):
    assert cutdiffusion_patch.native_size_px(flux_base) == 1024
    assert cutdiffusion_patch.native_size_px(td.flux_shift(flux_base, 2048, 2048)) == 1024
    assert cutdiffusion_patch.native_size_px(sd3_base) == 1024


def _fake_model(config_class):
    config = config_class.__new__(config_class)      # only its class name and latent format are read
    base = types.SimpleNamespace(model_config=config, latent_format=config_class.latent_format(),
                                 model_type=None)
    return types.SimpleNamespace(model=base)


@pytest.mark.parametrize("name", sorted(NATIVE_PX))
def test_native_size_of_each_family(name):
    config_class = getattr(comfy.supported_models, name, None)
    if config_class is None:
        pytest.skip(f"ComfyUI {rt.COMFY_VERSION} has no supported_models.{name}")
    assert cutdiffusion_patch.native_size_px(_fake_model(config_class)) == NATIVE_PX[name]


@pytest.mark.parametrize("name", ["Flux2", "HunyuanImage21", "ChromaRadiance"])
def test_latents_not_8x_are_a_clear_error(name):
    """Flux.2 (16x latent), HunyuanImage 2.1 (32x) and Chroma Radiance (pixel space): the pack
    counts 8 px per latent px, so patch_size 0 says so instead of cutting wrong-sized patches."""
    config_class = getattr(comfy.supported_models, name, None)
    if config_class is None:
        pytest.skip(f"ComfyUI {rt.COMFY_VERSION} has no supported_models.{name}")
    with pytest.raises(ValueError, match="patch_size"):
        cutdiffusion_patch.native_size_px(_fake_model(config_class))


def test_unknown_model_is_a_clear_error_naming_patch_size():
    class SomeFutureDiT:
        pass

    class SomeLatentFormat:
        pass

    model = types.SimpleNamespace(model=types.SimpleNamespace(model_config=SomeFutureDiT(),
                                                              latent_format=SomeLatentFormat(), model_type=None))
    with pytest.raises(ValueError, match=r"SomeFutureDiT.*set patch_size"):
        cutdiffusion_patch.native_size_px(model)
