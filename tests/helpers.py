"""Shared test code: running the pack, and independent reference implementations.

The references talk to the model only through ComfyUI's own BaseModel API
(`encode_adm`, `apply_model`, `model_sampling`), never through the pack, so a
match means the pack computes what the paper's code computes.
"""
from __future__ import annotations

import math

import torch

import comfy.sample
import comfy.samplers

from cutdiff_core.cutdiffusion_patch import CutDiffusionConfig, RunReport, apply_cutdiffusion, sample


def run_cut(model, latent, seed=1, steps=4, cfg=5.0, sampler="euler", scheduler="normal", conds=None, denoise=1.0,
            **config):
    """CutDiffusion KSampler's code path; returns (samples, report). The paper's layout (strided
    patches from noise) unless `layout` says otherwise: most tests check the paper's algorithm."""
    pos, neg = conds
    report = RunReport()
    patched = apply_cutdiffusion(model, CutDiffusionConfig(**{"layout": "patches", **config}), report)
    with torch.inference_mode():
        out = sample(patched, seed, steps, cfg, sampler, scheduler, pos, neg, latent, denoise)
    return out["samples"].clone(), report


def schedule(model, steps, scheduler="normal", denoise=1.0, sampler="euler"):
    """The sigmas KSampler would use (ComfyUI's own code)."""
    ks = comfy.samplers.KSampler(model, steps=steps, device="cpu", sampler=sampler, scheduler=scheduler,
                                 denoise=denoise)
    return ks.sigmas


class CountingModel:
    """Counts images through the UNet (a forward hook on the torch module, not the pack's code)."""

    def __init__(self, model):
        self.batches: list[int] = []
        self.shapes: list[tuple] = []
        self.ys: list[torch.Tensor] = []
        self._handle = model.model.diffusion_model.register_forward_pre_hook(self._hook, with_kwargs=True)

    def _hook(self, module, args, kwargs):
        x = args[0] if args else kwargs["x"]
        self.batches.append(x.shape[0])
        self.shapes.append(tuple(x.shape))
        if kwargs.get("y") is not None:
            self.ys.append(kwargs["y"].detach().clone())

    @property
    def images(self) -> int:
        return sum(self.batches)

    def close(self):
        self._handle.remove()

    def __enter__(self) -> "CountingModel":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# --------------------------------------------------------------------------- references

@torch.no_grad()
def cfg_denoise(model, x, sigma, conds, cfg, full_px, crops_px):
    """CFG denoised prediction for a batch of crops of one SDXL image, through BaseModel directly.

    `full_px` = (height, width) of the whole image (original = target size, as in
    the reference); `crops_px[k]` = crop offset of x[k].
    """
    base = model.model
    h_px, w_px = full_px
    preds = []
    for cond in conds:
        context, extra = cond[0][0], cond[0][1]
        ys = [base.encode_adm(pooled_output=extra["pooled_output"], width=w_px, height=h_px, crop_h=ch, crop_w=cw,
                              target_width=w_px, target_height=h_px) for ch, cw in crops_px]
        y = torch.cat(ys)
        t = torch.full((x.shape[0],), float(sigma))
        preds.append(base.apply_model(x, t, c_crossattn=context.repeat(x.shape[0], 1, 1), y=y))
    cond_pred, uncond_pred = preds
    return uncond_pred + (cond_pred - uncond_pred) * cfg


def reference_windows(length, window, stride):
    if length <= window:
        return [0]
    count = math.ceil((length - window) / stride) + 1
    return sorted({min(k * stride, length - window) for k in range(count)})


def reference_permutations(seed):
    """The pack's permutation stream: argsort of uniform noise from a generator seeded 2 * seed."""
    gen = torch.Generator().manual_seed((2 * seed) % 2 ** 63)
    return lambda shape: torch.argsort(torch.rand(shape, generator=gen), dim=0)


@torch.no_grad()
def reference_cutdiffusion(model, latent, seed, sigmas, t1, conds, cfg, native, stride, pixel_interaction=True,
                           batch_index=0):
    """The paper's algorithm as its code does it, with Euler steps, for one image.

    Stage 1 keeps an explicit stack of n native-size patch latents (one image), cut
    from ComfyUI's full-size noise; before every model call the values at each
    (c, y, x) are permuted across patches, the model runs on the permuted stack,
    its output is un-permuted and the *unpermuted* latents are stepped. At the
    split the patches are relocated into the full latent; stage 2 averages the
    denoised windows (jitter off) over the latent at the requested size.

    `batch_index`: image b of a batch latent, on its own: its slice of ComfyUI's batch
    noise and its slice of each evaluation's permutation draw (one uniform draw of shape
    [n, B, C, h, w] per evaluation, as the pack's documented stream draws it).
    """
    samples = latent["samples"]
    batch = samples.shape[0]
    assert 0 <= batch_index < batch
    _, c, height, width = samples.shape
    p1, p2 = math.ceil(height / native), math.ceil(width / native)
    h, w = height // p1, width // p2
    assert t1 == 0 or (p1 * h, p2 * w) == (height, width), "the reference's stage 1 handles exact grids only"
    full_px = (height * 8, width * 8)
    model_sampling = model.model.model_sampling
    noise = comfy.sample.prepare_noise(samples, seed)[batch_index:batch_index + 1]
    max_denoise = math.isclose(float(model_sampling.sigma_max), float(sigmas[0]), rel_tol=1e-5) or \
        float(sigmas[0]) > float(model_sampling.sigma_max)
    x = model_sampling.noise_scaling(sigmas[0], noise, torch.zeros_like(noise), max_denoise)
    draw = reference_permutations(seed)
    n = p1 * p2

    if t1 > 0:   # (stage 1 and relocation; nothing to relocate without it)
        # Stage 1 on the explicit patch stack: patch (i, j) = full[:, :, i::p1, j::p2].
        z = torch.stack([x[0, :, i::p1, j::p2] for i in range(p1) for j in range(p2)])
        cc, yy, xx = torch.meshgrid(torch.arange(c), torch.arange(h), torch.arange(w), indexing="ij")
        for step in range(t1):
            sigma, sigma_next = sigmas[step], sigmas[step + 1]
            if pixel_interaction and n > 1:
                perm = draw((n, batch, c, h, w))[:, batch_index]
                model_in = z[perm, cc, yy, xx]
            else:
                model_in = z
            out = cfg_denoise(model, model_in, sigma, conds, cfg, full_px, [(0, 0)] * n)
            if pixel_interaction and n > 1:
                denoised = torch.empty_like(out)
                denoised[perm, cc, yy, xx] = out
            else:
                denoised = out
            z = z + (z - denoised) / sigma * (sigma_next - sigma)

        # Relocation: patch (i, j) supplies pixels (y * p1 + i, x * p2 + j).
        x = torch.empty(1, c, height, width)
        for i in range(p1):
            for j in range(p2):
                x[0, :, i::p1, j::p2] = z[i * p2 + j]

    # Stage 2: MultiDiffusion windows.
    wy, wx = min(native, height), min(native, width)
    windows = [(y0, x0) for y0 in reference_windows(height, native, stride)
               for x0 in reference_windows(width, native, stride)]
    for step in range(t1, len(sigmas) - 1):
        sigma, sigma_next = sigmas[step], sigmas[step + 1]
        crops = torch.cat([x[:, :, y0:y0 + wy, x0:x0 + wx] for y0, x0 in windows])
        out = cfg_denoise(model, crops, sigma, conds, cfg, full_px, [(y0 * 8, x0 * 8) for y0, x0 in windows])
        total, count = torch.zeros_like(x), torch.zeros_like(x)
        for k, (y0, x0) in enumerate(windows):
            total[:, :, y0:y0 + wy, x0:x0 + wx] += out[k]
            count[:, :, y0:y0 + wy, x0:x0 + wx] += 1
        denoised = total / count
        x = x + (x - denoised) / sigma * (sigma_next - sigma)

    return model.model.process_latent_out(model_sampling.inverse_noise_scaling(sigmas[-1], x))


def assert_matches_reference(got, expected):
    """Same algorithm, different float summation order (cond/uncond batching, window order):
    agreement to float32 precision of the latent's scale."""
    scale = float(expected.abs().max())
    torch.testing.assert_close(got, expected, atol=1e-5 * scale, rtol=1e-4)


# --------------------------------------------------------------------------- what the sampler saw

def sample_traced(model, seed, steps, cfg, sampler, scheduler, conds, latent, denoise=1.0):
    """KSampler's sampling (ComfyUI's noise, comfy.sample.sample) with a step callback that records,
    per step, the latent the step's model evaluation was made at and the denoised prediction the
    sampler received for it (ComfyUI's own callback, after CFG and post-CFG hooks). The callback
    changes nothing, so the samples are KSampler's. Returns (samples, [(x_i, denoised_i)])."""
    trace = []

    def callback(step, x0, x, total_steps):
        assert step == len(trace), "one callback per step, in order"
        trace.append((x.detach().clone(), x0.detach().clone()))

    pos, neg = conds
    samples = latent["samples"]
    noise = comfy.sample.prepare_noise(samples, seed)
    with torch.inference_mode():
        out = comfy.sample.sample(model, noise, steps, cfg, sampler, scheduler, pos, neg, samples, denoise=denoise,
                                  callback=callback, disable_pbar=True, seed=seed)
    return out.clone(), [(x.clone(), d.clone()) for x, d in trace]


def assert_skips_reuse_eps(trace, sigmas, skipped):
    """AdaptiveDiffusion (spec 4): on a skipped step s the sampler got denoised_s = x_s - sigma_s * eps,
    with eps = (x_l - denoised_l) / sigma_l of the last evaluated step l: the old noise prediction
    at the *current* latent and sigma, not the old denoised value.

    Checked from the sampler's own callback to float32 rounding: atol 4e-6 of the largest value
    (~30 ulp; the right computation is off by 1-3 ulp on the tiny model). For Euler and DDIM
    the right value and the stale denoised_l are the same number (x - sigma * eps is constant
    along their step), so callers use samplers whose step is not first order in eps (dpmpp_2m,
    lms, ancestral); and the check insists on it: on at least one skipped step the stale
    denoised_l must be 10 tolerances away from the right value.
    """
    assert skipped, "no step was skipped: nothing checked"
    stale_margin = 0.0
    for s in skipped:
        last = max(i for i in range(s) if i not in skipped)
        (x_l, d_l), (x_s, d_s) = trace[last], trace[s]
        sigma_l, sigma_s = float(sigmas[last]), float(sigmas[s])
        want = x_s - sigma_s * (x_l - d_l) / sigma_l
        atol = 4e-6 * float(want.abs().max())
        torch.testing.assert_close(d_s, want, atol=atol, rtol=0, msg=lambda m: f"skipped step {s}: {m}")
        stale_margin = max(stale_margin, float((d_l - want).abs().max()) / atol)
    assert stale_margin > 10, f"a stale prediction would pass this check too ({stale_margin:.1f} tolerances away)"


# --------------------------------------------------------------------------- ControlNet

def tiny_controlnet(model, seed=5):
    """A randomly initialised ControlNet with the tiny model's UNet layout (3-channel hint, 8x compression)."""
    import comfy.cldm.cldm
    import comfy.controlnet
    import comfy.model_management
    import comfy.ops

    from cutdiff_dev import comfy_runtime as rt

    config = dict(model.model.model_config.unet_config)
    config.pop("out_channels")
    config.update(hint_channels=3, operations=comfy.ops.disable_weight_init, dtype=torch.float32, device="cpu")
    control_model = comfy.cldm.cldm.ControlNet(**config)
    rt._init_weights(control_model, seed=seed)
    return comfy.controlnet.ControlNet(control_model, load_device=comfy.model_management.get_torch_device())
