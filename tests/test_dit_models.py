"""CutDiffusion on DiT / flow-matching models (issue 15), on tiny random models built from
ComfyUI's own classes (cutdiff_dev/tiny_dit.py): the SDXL guarantees of test_sampler.py, per family
(Flux.1-dev, SD3, Lumina 2, Z-Image, Qwen-Image, Flux.2).

- native size: the output is KSampler's, bit for bit;
- stage_split 0, no jitter: plain MultiDiffusion, against an independent loop that asks
  ComfyUI's own `sampling_function` for each window crop's denoised prediction;
- model evaluations counted through the diffusion model equal the plan;
- the stage split is a noise level of the shifted flow schedule (Flux: ModelSamplingFlux's shift);
- every patch and window is a native-size image to the model: the same positional ids
  (Flux / Flux.2 / Qwen-Image RoPE ids, Lumina's RoPE ids, SD3's cropped learned position
  table) as a native-size call;
- the per-image conditioning (pooled vectors, or text features where a family has no pooled
  vector) and Flux guidance reach every patch and window, with the right image.

Qwen-Image samples a one-frame 5-D latent [B, C, 1, H, W] and Flux.2 a latent of 16 px per latent
pixel; both are planned and cut as images of their own scale.
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

from cutdiff_core import cutdiffusion_patch, native_size

PATCH = 256          # px: the tiny models' "native" size (32 latent px at 8x; 16x16 tokens after 2x2 patchify)
NATIVE = PATCH // 8
FLUX_GUIDANCE, FLUX_NEG_GUIDANCE = 3.5, 2.0

FAMILIES = ["flux", "sd3", "lumina2", "zimage", "qwen_image", "flux2"]

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


def _flux2_conds(batch=1, seed=3):
    # A Flux.2 text encoder gives no pooled vector: CLIPTextEncode stores pooled_output None.
    pos, _ = td.context_conds(td.FLUX2_CONTEXT_DIM, seed, batch, guidance=FLUX_GUIDANCE, pooled_output=None)
    _, neg = td.context_conds(td.FLUX2_CONTEXT_DIM, seed + 1, batch, guidance=FLUX_NEG_GUIDANCE, pooled_output=None)
    return pos, neg


def _pooled(cond):
    return cond[0][1]["pooled_output"]


def _text(cond):
    return cond[0][0]


def _family(name, flux_base, sd3_base):
    """What the family tests need to know of a family.

    scale: px per latent px; native: PATCH in latent px; latent(w_px, h_px, batch): the empty latent
    its workflows use; positions: how its positional encoding is recorded; traced(kwargs, tokens):
    the per-image conditioning rows of a diffusion-model call, matched against per_image(cond);
    guidance: the (positive, negative) guidance it is given, or None."""
    ns = types.SimpleNamespace(name=name, scale=8, latent=td.empty_latent, positions="rope_ids",
                               guidance=None, per_image=_text, traced=lambda kwargs, tokens: kwargs["context"])
    if name == "flux":
        ns.model, ns.conds, ns.guidance = td.flux_shift(flux_base, 1024, 1024), _flux_conds, (FLUX_GUIDANCE,
                                                                                              FLUX_NEG_GUIDANCE)
        ns.per_image, ns.traced = _pooled, lambda kwargs, tokens: kwargs["y"]
    elif name == "sd3":
        ns.model, ns.conds, ns.positions = sd3_base, lambda batch=1, seed=3: td.sd3_conds(seed, batch), "sd3"
        ns.per_image, ns.traced = _pooled, lambda kwargs, tokens: kwargs["y"]
    elif name in ("lumina2", "zimage"):
        z_image = name == "zimage"
        ns.model = td.tiny_zimage(seed=0) if z_image else td.tiny_lumina2(seed=0)
        ns.conds = lambda batch=1, seed=3: td.lumina_conds(seed, batch, z_image=z_image)
        ns.positions = "lumina"
    elif name == "qwen_image":
        ns.model = td.tiny_qwen_image(seed=0)
        ns.conds = lambda batch=1, seed=3: td.context_conds(td.QWEN_CONTEXT_DIM, seed, batch)
    elif name == "flux2":
        ns.model, ns.conds, ns.guidance = td.tiny_flux2(seed=0), _flux2_conds, (FLUX_GUIDANCE, FLUX_NEG_GUIDANCE)
        ns.scale, ns.latent = td.FLUX2_LATENT_PX, td.empty_flux2_latent
        # model_base.Flux2 left-pads the text features to 512 tokens; the prompt's own are the last ones.
        ns.traced = lambda kwargs, tokens: kwargs["context"][:, -tokens:]
    ns.native = PATCH // ns.scale
    return ns


@pytest.fixture(scope="module")
def families(flux_base, sd3_base):
    cache = {}

    def get(name):
        if name not in cache:
            cache[name] = _family(name, flux_base, sd3_base)
        return cache[name]
    return get


@pytest.fixture(params=FAMILIES)
def family(request, families):
    """A family's model (Flux with the shift ModelSamplingFlux sets at 1024 px) and test inputs."""
    return families(request.param)


def _samples_shape(family, batch, h, w):
    """The sampled latent's shape: ComfyUI samples (and returns) Qwen-Image's latent as 5-D."""
    channels = 128 if family.name == "flux2" else 16
    return (batch, channels, 1, h, w) if family.name == "qwen_image" else (batch, channels, h, w)


# --------------------------------------------------------------------------- native size = KSampler

@pytest.mark.parametrize("sampler, scheduler, cfg", [("euler", "simple", 1.0), ("dpmpp_2m", "normal", 3.5)])
def test_native_size_equals_ksampler(family, sampler, scheduler, cfg):
    latent = family.latent(PATCH, PATCH, batch=2)
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
    samples = comfy.sample.fix_empty_latent_channels(model, latent["samples"])   # as KSampler does
    height, width = samples.shape[-2:]
    sigmas = schedule(model, steps, scheduler)
    ms = model.get_model_object("model_sampling")
    noise = comfy.sample.prepare_noise(samples, seed)
    x = ms.noise_scaling(sigmas[0], noise, torch.zeros_like(noise))
    wy, wx = min(native, height), min(native, width)
    windows = [(y0, x0) for y0 in reference_windows(height, native, stride)
               for x0 in reference_windows(width, native, stride)]
    pos, neg = conds
    window_noise = torch.zeros(*samples.shape[:-2], wy, wx)
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
            crop = x[..., y0:y0 + wy, x0:x0 + wx]
            den = comfy.samplers.sampling_function(base, crop, sigma.expand(crop.shape[0]), processed["negative"],
                                                   processed["positive"], cfg, model_options={}, seed=seed)
            total[..., y0:y0 + wy, x0:x0 + wx] += den
            count[..., y0:y0 + wy, x0:x0 + wx] += 1
        denoised = total / count
        x = x + (x - denoised) / sigma * (sigma_next - sigma)
    return x


def test_multidiffusion_special_case_matches_reference(family):
    latent = family.latent(2 * PATCH, 3 * PATCH // 2, batch=2)   # 1.5x2 native (48x64 at 8x): 2x3 windows
    conds = family.conds(batch=2)
    native = family.native
    got, report = run_cut(family.model, latent, seed=3, steps=3, cfg=3.0, scheduler="simple", conds=conds,
                          patch_size=PATCH, stage_split=0.0, window_jitter=False)
    expected = _multidiffusion_reference(family.model, latent, 3, 3, "simple", 3.0, conds, native, native // 2)
    assert report.plan.stage1_steps == 0 and report.plan.layout.count == 6
    assert got.shape == expected.shape == _samples_shape(family, 2, 3 * native // 2, 2 * native)
    scale = float(expected.abs().max())
    torch.testing.assert_close(got, expected, atol=1e-5 * scale, rtol=1e-4)


# --------------------------------------------------------------------------- evaluations = plan

@pytest.mark.parametrize("w_px, h_px", [(2 * PATCH, 2 * PATCH), (408, 264)])   # 2x2 native; padded (51x33 at 8x)
def test_model_evaluations_match_the_plan(family, w_px, h_px):
    latent = family.latent(w_px, h_px, batch=2)
    with CountingModel(family.model) as counter:
        out, report = run_cut(family.model, latent, seed=1, steps=4, cfg=3.0, scheduler="simple",
                              conds=family.conds(batch=2), patch_size=PATCH, window_batch_size=4)
    plan = report.plan
    # The plan, recomputed independently of it: ceil-grid patches; windows over the padded latent.
    h, w, native = h_px // family.scale, w_px // family.scale, family.native
    rows, cols = math.ceil(h / native), math.ceil(w / native)
    padded_h, padded_w = rows * math.ceil(h / rows), cols * math.ceil(w / cols)
    windows = len(reference_windows(padded_h, native, native // 2)) * len(reference_windows(padded_w, native,
                                                                                            native // 2))
    t1 = plan.stage1_steps
    assert 0 < t1 < 4 and (plan.grid.n, plan.layout.count) == (rows * cols, windows)
    assert counter.images == plan.model_evaluations(batch=2) == 2 * 2 * (t1 * rows * cols + (4 - t1) * windows)
    assert max(counter.batches) <= 4 * 2 * 2        # window_batch_size windows x batch x CFG halves
    assert out.shape == _samples_shape(family, 2, h, w)


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
    rope_ids (Flux, Flux.2, Qwen-Image): the RoPE ids fed to pe_embedder (text ids, then image
    ids from the model's own process_img). lumina (Lumina 2, Z-Image): the ids NextDiT's
    patchify_and_embed feeds rope_embedder (caption index, y, x); ComfyUI 0.3.75 feeds them once
    per call for the batch, newer ComfyUI once per segment (caption, image) for one image shared
    by the batch: the segments of a call are joined, one id set per image. sd3: the cropped
    learned position table (cropped_pos_embed), one per call."""

    def __init__(self, model, positions):
        self.per_image: list[torch.Tensor] = []
        dm = model.model.diffusion_model
        if positions == "rope_ids":
            handles = [dm.pe_embedder.register_forward_pre_hook(self._rope_ids)]
            self._undo = lambda: [h.remove() for h in handles]
        elif positions == "lumina":
            self._segments: list[torch.Tensor] = []
            handles = [dm.rope_embedder.register_forward_pre_hook(lambda m, args: self._segments.append(args[0])),
                       dm.register_forward_hook(self._lumina_call, with_kwargs=True)]
            self._undo = lambda: [h.remove() for h in handles]
        else:
            original = dm.cropped_pos_embed

            def cropped(hw, device=None):
                out = original(hw, device=device)
                self.per_image.append(out[0].detach().clone())
                return out
            dm.cropped_pos_embed = cropped
            self._undo = lambda: delattr(dm, "cropped_pos_embed")

    def _rope_ids(self, module, args):
        ids = args[0]
        self.per_image.extend(ids[i].detach().clone() for i in range(ids.shape[0]))

    def _lumina_call(self, module, args, kwargs, output):
        images = (args[0] if args else kwargs["x"]).shape[0]
        ids = torch.cat(self._segments, dim=1)
        self._segments = []
        assert ids.shape[0] in (1, images)
        self.per_image.extend(ids[min(i, ids.shape[0] - 1)].detach().clone() for i in range(images))

    def close(self):
        self._undo()


def test_every_patch_and_window_has_native_positions(family):
    with torch.inference_mode():
        rec = _PositionRecorder(family.model, family.positions)
        try:
            rt.ksampler(family.model, 1, 1, 3.0, "euler", "simple", *family.conds(), family.latent(PATCH, PATCH))
        finally:
            rec.close()
    native = rec.per_image[0]
    assert rec.per_image and all(torch.equal(p, native) for p in rec.per_image)
    if family.name == "flux":
        assert native.shape[0] == 6 + (NATIVE // 2) ** 2     # text tokens + 16x16 image tokens
    if family.name == "zimage":
        assert native.shape[0] == 32 + (NATIVE // 2) ** 2    # 6 caption tokens padded to 32 + 16x16 image tokens

    # 2x3 native area with jittered windows: 6 patches in stage 1, 15 windows in stage 2.
    rec = _PositionRecorder(family.model, family.positions)
    try:
        with CountingModel(family.model) as counter:
            _, report = run_cut(family.model, family.latent(3 * PATCH, 2 * PATCH), seed=5, steps=2, cfg=3.0,
                                scheduler="simple", conds=family.conds(), patch_size=PATCH, window_batch_size=5)
    finally:
        rec.close()
    assert report.plan.stage1_steps == 1 and (report.plan.grid.n, report.plan.layout.count) == (6, 15)
    calls = rec.per_image
    # RoPE families: one id set per image in every call; SD3: one position table per call (shared by its batch).
    assert len(calls) == (len(counter.batches) if family.positions == "sd3" else report.plan.model_evaluations())
    for i, pos in enumerate(calls):
        assert torch.equal(pos, native), f"model input {i}: positions differ from a native-size call"


# --------------------------------------------------------------------------- per-image conditioning and guidance

class _CondRecorder:
    """The traced per-image conditioning rows (family.traced) and guidance rows of every diffusion-model call."""

    def __init__(self, family, tokens):
        self.calls: list[tuple] = []
        self._traced, self._tokens = family.traced, tokens
        self._handle = family.model.model.diffusion_model.register_forward_pre_hook(self._hook, with_kwargs=True)

    def _hook(self, module, args, kwargs):
        x = args[0] if args else kwargs["x"]
        g = kwargs.get("guidance")
        self.calls.append((x.shape[0], self._traced(kwargs, self._tokens).detach().clone(),
                           None if g is None else g.detach().clone()))

    def close(self):
        self._handle.remove()


@pytest.mark.parametrize("stage_split", [0.5, 0.0])
def test_conditioning_and_guidance_reach_every_patch_and_window(family, stage_split):
    """Pooled vectors (Flux, SD3) or text features (families without one), and Flux / Flux.2
    guidance, row by row: each row of each call carries its own image's conditioning."""
    batch = 2
    pos, neg = family.conds(batch=batch)
    rec = _CondRecorder(family, tokens=_text(pos).shape[1])
    try:
        _, report = run_cut(family.model, family.latent(2 * PATCH, 2 * PATCH, batch=batch), seed=4, steps=3,
                            cfg=3.0, scheduler="simple", conds=(pos, neg), patch_size=PATCH, window_batch_size=3,
                            stage_split=stage_split)
    finally:
        rec.close()
    # (per-image rows, guidance) of each CFG half; ComfyUI puts a call's halves one after another,
    # and within a half the patch / window stack is image-minor: row r is image r % batch.
    guidance_of = family.guidance or (None, None)
    halves = [(family.per_image(pos), guidance_of[0]), (family.per_image(neg), guidance_of[1])]
    seen = {(h, b): 0 for h in range(2) for b in range(batch)}
    for rows, traced, guidance in rec.calls:
        assert traced.shape[0] == rows
        assert (guidance is not None) == (family.guidance is not None)
        r = 0
        while r < rows:
            half = next(h for h, (per_image, _) in enumerate(halves) if torch.equal(traced[r], per_image[0]))
            block = 0
            while r < rows and torch.equal(traced[r], halves[half][0][block % batch]):
                if guidance is not None:
                    assert float(guidance[r]) == halves[half][1], (r, float(guidance[r]))
                seen[(half, block % batch)] += 1
                r, block = r + 1, block + 1
            assert block % batch == 0, "a half that does not hold whole sets of the batch's images"
    per_pair = report.plan.model_evaluations(batch=1, cfg_batches=1)
    assert per_pair > 1 and seen == {key: per_pair for key in seen}


# --------------------------------------------------------------------------- patch_size 0: native sizes

NATIVE_PX = {   # ComfyUI config class -> training size in px (see cutdiff_core.native_size)
    "Flux": 1024, "FluxSchnell": 1024, "SD3": 1024, "Lumina2": 1024, "ZImage": 1024, "QwenImage": 1328,
    "HiDream": 1024, "Chroma": 1024, "AuraFlow": 1024,
}


def test_tiny_dit_models_know_their_native_size(flux_base, sd3_base, families):
    assert cutdiffusion_patch.native_size_px(flux_base) == 1024
    assert cutdiffusion_patch.native_size_px(td.flux_shift(flux_base, 2048, 2048)) == 1024
    assert cutdiffusion_patch.native_size_px(sd3_base) == 1024
    assert cutdiffusion_patch.native_size_px(families("lumina2").model) == 1024
    assert cutdiffusion_patch.native_size_px(families("zimage").model) == 1024
    assert cutdiffusion_patch.native_size_px(families("qwen_image").model) == 1328


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


@pytest.mark.parametrize("name, native_px, latent_px", [("Flux2", 1024, 16), ("HunyuanImage21", 2048, 32),
                                                     ("ChromaRadiance", 1024, 1)])
def test_latents_that_are_not_8x_are_planned_at_their_own_scale(name, native_px, latent_px):
    """Flux.2 (16 px per latent px), HunyuanImage 2.1 (32) and Chroma Radiance (pixel space): the
    native size in px and the latent's scale, so the plan cuts native-size patches of each."""
    config_class = getattr(comfy.supported_models, name, None)
    if config_class is None:
        pytest.skip(f"ComfyUI {rt.COMFY_VERSION} has no supported_models.{name}")
    model = _fake_model(config_class)
    assert cutdiffusion_patch.native_size_px(model) == native_px
    assert native_size.latent_px(model) == latent_px


def test_unknown_model_is_a_clear_error_naming_patch_size():
    class SomeFutureDiT:
        pass

    class SomeLatentFormat:
        pass

    model = types.SimpleNamespace(model=types.SimpleNamespace(model_config=SomeFutureDiT(),
                                                              latent_format=SomeLatentFormat(), model_type=None))
    with pytest.raises(ValueError, match=r"SomeFutureDiT.*set patch_size"):
        cutdiffusion_patch.native_size_px(model)


# --------------------------------------------------------------------------- Flux.2: 16 px per latent px

def test_flux2_sizes_must_be_whole_latent_pixels(families):
    """Before any sampling: a patch_size that is a multiple of 8 px but not of Flux.2's 16 px."""
    model = families("flux2").model
    with pytest.raises(ValueError, match=r"patch_size = 264 must be a multiple of 16 px"):
        run_cut(model, td.empty_flux2_latent(2 * PATCH, 2 * PATCH), steps=2, cfg=1.0, conds=_flux2_conds(),
                patch_size=264)


def test_flux2_patch_size_0_plans_1024_px_as_64_latent_px(families):
    model = families("flux2").model
    with CountingModel(model) as counter:
        out, report = run_cut(model, td.empty_flux2_latent(2048, 1024), seed=1, steps=2, cfg=1.0,
                              scheduler="simple", conds=_flux2_conds(), patch_size=0, window_jitter=False)
    plan = report.plan
    assert (plan.grid.rows, plan.grid.cols, plan.layout.count) == (1, 2, 3)   # 64x128 latent: 1x2 patches, 3 windows
    assert set(shape[-2:] for shape in counter.shapes) == {(64, 64)}
    assert out.shape == (1, 128, 64, 128)


# --------------------------------------------------------------------------- edit models: reference latents

class _KwargRecorder:
    """Rows and the values of some keyword inputs of every diffusion-model call."""

    def __init__(self, model, *keys):
        self.calls: list[tuple] = []
        self._keys = keys
        self._handle = model.model.diffusion_model.register_forward_pre_hook(self._hook, with_kwargs=True)

    def _hook(self, module, args, kwargs):
        x = args[0] if args else kwargs["x"]
        self.calls.append((x.shape[0], *(kwargs.get(key) for key in self._keys)))

    def close(self):
        self._handle.remove()


def _with_reference(conds, reference):
    """What ComfyUI's ReferenceLatent node does to a CONDITIONING (node_helpers.conditioning_set_values,
    appended to any earlier reference)."""
    import node_helpers

    return tuple(node_helpers.conditioning_set_values(c, {"reference_latents": [reference]}, append=True)
                 for c in conds)


@pytest.mark.parametrize("name", [
    "flux",   # Flux.1 Kontext's way (the tiny dev model stands in: Kontext is the same transformer)
    "qwen_image",   # Qwen-Image-Edit's way
])
def test_reference_latents_reach_every_patch_and_window(families, name):
    """An edit model's reference image (ReferenceLatent: `reference_latents` in the cond) is given
    whole to every patch and window call, as ComfyUI gives it to a native-size call, and
    stage_split 0 is MultiDiffusion with the reference in every window."""
    family = families(name)
    gen = torch.Generator().manual_seed(11)
    reference = torch.randn(1, 16, 24, 24, generator=gen)       # a 192 px reference image, another size
    if name == "qwen_image":
        reference = reference.unsqueeze(2)                        # VAEEncode with the Wan 2.1 VAE: 5-D
    conds = _with_reference(family.conds(), reference)
    expected_ref = family.model.model.process_latent_in(reference)

    rec = _KwargRecorder(family.model, "ref_latents")
    try:
        _, report = run_cut(family.model, family.latent(2 * PATCH, 2 * PATCH), seed=2, steps=3, cfg=3.0,
                            scheduler="simple", conds=conds, patch_size=PATCH, window_batch_size=3)
    finally:
        rec.close()
    assert report.plan.grid.n == 4 and report.plan.layout.count == 9
    assert sum(rows for rows, _ in rec.calls) == report.plan.model_evaluations()
    for i, (rows, refs) in enumerate(rec.calls):
        assert refs is not None and len(refs) == 1, f"call {i}: no reference latents"
        assert refs[0].shape[0] == rows and all(torch.equal(row, expected_ref[0]) for row in refs[0]), i

    latent = family.latent(2 * PATCH, 3 * PATCH // 2)
    got, _ = run_cut(family.model, latent, seed=3, steps=3, cfg=3.0, scheduler="simple", conds=conds,
                     patch_size=PATCH, stage_split=0.0, window_jitter=False)
    expected = _multidiffusion_reference(family.model, latent, 3, 3, "simple", 3.0, conds, NATIVE, NATIVE // 2)
    scale = float(expected.abs().max())
    torch.testing.assert_close(got, expected, atol=1e-5 * scale, rtol=1e-4)


# --------------------------------------------------------------------------- text attention masks

@pytest.mark.parametrize("name", [
    "lumina2",
    "qwen_image",
])
def test_text_attention_masks_reach_every_patch_and_window(families, name):
    """A text encoder's attention mask with padding (prompts of different lengths): every patch and
    window call gets its half's mask rows (and Lumina's num_tokens), as a native-size call does."""
    family = families(name)
    tokens = 6
    if name == "lumina2":
        pos, _ = td.lumina_conds(3, 1, tokens=tokens, padded=2)
        _, neg = td.lumina_conds(4, 1, tokens=tokens, padded=1)
    else:
        pos, neg = td.context_conds(td.QWEN_CONTEXT_DIM, 3, 1, tokens=tokens)
        for cond, padded in ((pos, 2), (neg, 1)):
            cond[0][1]["attention_mask"] = torch.tensor([[1] * (tokens - padded) + [0] * padded])
    masks = {int(c[0][1]["attention_mask"].sum()): c[0][1]["attention_mask"][0] for c in (pos, neg)}

    # The pack calls the model with several patches / windows a call; ComfyUI's own KSampler is asked
    # to do the same (a batch of 2) first, so a host that cannot is a skip, not a pack failure.
    rec = _KwargRecorder(family.model, "attention_mask", "num_tokens")
    try:
        rt.ksampler(family.model, 1, 1, 3.0, "euler", "simple", pos, neg, family.latent(PATCH, PATCH, batch=2))
    except RuntimeError as error:
        pytest.skip(f"ComfyUI {rt.COMFY_VERSION}'s own KSampler fails on {name} with a padded text mask "
                    f"at batch 2: {error}")
    finally:
        rec.close()
    if rec.calls[0][1] is None:
        pytest.skip(f"ComfyUI {rt.COMFY_VERSION}'s model_base passes no attention_mask to {name}")

    rec = _KwargRecorder(family.model, "attention_mask", "num_tokens")
    try:
        _, report = run_cut(family.model, family.latent(2 * PATCH, 2 * PATCH), seed=2, steps=3, cfg=3.0,
                            scheduler="simple", conds=(pos, neg), patch_size=PATCH, window_batch_size=3)
    finally:
        rec.close()
    rows_per_half = {n: 0 for n in masks}
    for rows, mask, num_tokens in rec.calls:
        assert mask is not None and mask.shape[0] == rows
        # Each half's rows are its own mask; which half a row is, its unpadded length says.
        for row in mask:
            length = int(row.sum())
            assert torch.equal(row, masks[length])
            if num_tokens is not None:
                assert num_tokens == length
            rows_per_half[length] += 1
    per_half = report.plan.model_evaluations(batch=1, cfg_batches=1)
    assert per_half > 1 and rows_per_half == {n: per_half for n in masks}


# --------------------------------------------------------------------------- native first

@pytest.mark.parametrize("target_pass", ["whole frame", "tiles"])
@pytest.mark.parametrize("w_px, h_px", [(2 * PATCH, 2 * PATCH), (408, 264)])   # square grid; 2x3 grid, padded
def test_native_first_runs_on_every_family(family, w_px, h_px, target_pass):
    """Native first on each family: a layout pass at the native area (one native-size image per step,
    batch and CFG half), then the target size on the whole frame (one image per step, batch and CFG
    half), or the target pass's plan in shifted tiles, with the patches' layout guidance on the square
    grid only; the one-frame Qwen-Image latent keeps its frame axis."""
    latent = family.latent(w_px, h_px, batch=2)
    with CountingModel(family.model) as counter:
        out, report = run_cut(family.model, latent, seed=1, steps=4, cfg=3.0, scheduler="simple",
                              conds=family.conds(batch=2), patch_size=PATCH, layout="native first",
                              target_pass=target_pass, layout_denoise=0.3)
    first, plan = report.layout, report.plan
    assert first is not None and not first.is_whole_run
    tail = first.steps - first.refine_from
    if target_pass == "whole frame":
        assert plan is None and counter.images == 2 * 2 * (first.steps + tail)
    else:
        assert plan.steps == tail and plan.layout.mode == "shifted"
        assert plan.guided == (plan.grid.rows == plan.grid.cols)
        assert counter.images == 2 * 2 * first.steps + plan.model_evaluations(batch=2)
    assert out.shape == _samples_shape(family, 2, h_px // family.scale, w_px // family.scale)
    assert torch.isfinite(out).all()
