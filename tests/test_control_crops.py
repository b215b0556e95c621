"""ControlNet hints stay aligned with stage-2 windows (spec 4) where the window placement moves:
shifted stage 2 (tiles over the rolled latent), jittered windows, a batch of images with one hint
each, and two chained ControlNets.

What is checked, for every image of every stage-2 ControlNet call: the hint the ControlNet's own
torch module receives is the crop of the full-size hint at the place in the full latent that the
call's latent window came from. That place is found from the latent, not from the pack: the latent
the sampler evaluated at that step (ComfyUI's step callback), scaled by the model's c_in as ComfyUI's
ControlNet scales its input, is searched (circularly, for shifted tiles) for the window the
ControlNet saw, in every image of the batch.
"""
import torch
import torch.nn.functional as F

import comfy.utils
import nodes

from cutdiff_dev import comfy_runtime as rt
from helpers import reference_windows, run_cut, sample_traced, schedule, tiny_controlnet

from cutdiff_core.cutdiffusion_patch import CutDiffusionConfig, RunReport, apply_cutdiffusion

PATCH = 256
NATIVE = PATCH // 8
SCALE = 8   # hint px per latent px
STEPS = 4


class ControlCalls:
    """Every call of a ControlNet's torch module: (timestep, x, hint), by a forward hook."""

    def __init__(self, control_net):
        self.calls = []
        self._handle = control_net.control_model.register_forward_pre_hook(self._hook, with_kwargs=True)

    def _hook(self, module, args, kwargs):
        self.calls.append((float(kwargs["timesteps"].reshape(-1)[0]), kwargs["x"].detach().clone(),
                           kwargs["hint"].detach().clone()))

    def close(self):
        self._handle.remove()


def apply_control(conds, control_net, hint):
    """ControlNetApplyAdvanced, as a workflow would: chains onto a ControlNet already in the conds."""
    pos, neg = conds
    return nodes.ControlNetApplyAdvanced().apply_controlnet(pos, neg, control_net, hint.movedim(1, -1), 1.0, 0.0,
                                                            1.0)


def run(model, conds, latent, **config):
    report = RunReport()
    patched = apply_cutdiffusion(model, CutDiffusionConfig(layout="patches", patch_size=PATCH, **config), report)
    samples, trace = sample_traced(patched, 5, STEPS, 5.0, "euler", "normal", conds, latent)
    return samples, trace, report


def locate(window, latents):
    """(image, y, x): where in `latents` [B, C, H, W] (circularly) the window [C, h, w] was cut from."""
    h, w = window.shape[-2:]
    best = None
    for b, full in enumerate(latents):
        wrapped = F.pad(full[None], (0, w - 1, 0, h - 1), mode="circular")   # [1, C, H+h-1, W+w-1]
        ssd = (F.avg_pool2d(wrapped ** 2, (h, w), stride=1, divisor_override=1).sum(1)
               - 2 * F.conv2d(wrapped, window[None])[:, 0] + (window ** 2).sum())[0]
        y, x = divmod(int(ssd.argmin()), ssd.shape[-1])
        if best is None or float(ssd[y, x]) < best[0]:
            best = (float(ssd[y, x]), b, y, x)
    _, b, y, x = best
    full = latents[b]
    crop = torch.roll(full, (-y, -x), (-2, -1))[:, :h, :w]
    torch.testing.assert_close(window, crop, atol=1e-5, rtol=1e-5)   # really cut from there
    return b, y, x


def check_stage2_hints(model, trace, report, calls, full_hints):
    """Every stage-2 item's hint is the crop of its image's full-size hint at its window's place.

    Returns the places found, [(step, image, y, x, h, w)]."""
    sampling = model.model.model_sampling
    sigmas = schedule(model, STEPS)
    timesteps = [float(sampling.timestep(s)) for s in sigmas[:-1]]
    t1 = report.plan.stage1_steps
    places = []
    for t, x, hint in calls:
        step = min(range(STEPS), key=lambda i: abs(timesteps[i] - t))
        assert abs(timesteps[step] - t) < 1e-3, t
        if step < t1:
            continue
        latents = trace[step][0] / (sigmas[step] ** 2 + 1.0) ** 0.5   # ComfyUI's c_in for an EPS model
        h, w = x.shape[-2:]
        assert hint.shape[0] in (1, x.shape[0]) and hint.shape[1:] == (3, h * SCALE, w * SCALE)
        hint = hint.expand(x.shape[0], -1, -1, -1)   # a one-image hint is broadcast over the batch
        for item, item_hint in zip(x, hint):
            b, y, x0 = locate(item, latents)
            full = full_hints[b % full_hints.shape[0]]
            want = torch.roll(full, (-y * SCALE, -x0 * SCALE), (-2, -1))[:, :h * SCALE, :w * SCALE]
            assert torch.equal(item_hint, want), (step, b, y, x0)
            places.append((step, b, y, x0, h, w))
    assert {p[0] for p in places} == set(range(t1, STEPS)), "every stage-2 step was checked"
    return places


def full_size(hint, latent):
    """The hint as ComfyUI's ControlNet resizes it for the whole latent."""
    height, width = latent["samples"].shape[-2:]
    return comfy.utils.common_upscale(hint, width * SCALE, height * SCALE, "nearest-exact", "center")


def hints(batch=1, seed=0, size=(200, 260)):
    return torch.rand(batch, 3, *size, generator=torch.Generator().manual_seed(seed))


def run_with_one_controlnet(model, conds, latent, control_net, hint, **config):
    """A run with one ControlNet; (ControlNet calls, stage-2 places checked, report)."""
    calls = ControlCalls(control_net)
    try:
        _, trace, report = run(model, apply_control(conds, control_net, hint), latent, **config)
    finally:
        calls.close()
    return calls.calls, check_stage2_hints(model, trace, report, calls.calls, full_size(hint, latent)), report


def test_shifted_tiles_see_the_rolled_hint_crop(model, conds):
    latent = rt.empty_latent(2 * PATCH, 2 * PATCH)
    control_net, hint = tiny_controlnet(model), hints()
    calls, places, report = run_with_one_controlnet(model, conds, latent, control_net, hint,
                                                    stage2_mode="shifted", window_batch_size=3)
    height, width = latent["samples"].shape[-2:]
    assert len(places) == 2 * 4 * report.plan.stage2_steps   # 4 tiles, cond + uncond
    # The tiling really moved and some tiles wrapped around the border: the roll path was exercised.
    assert any(y + h > height or x + w > width for _, _, y, x, h, w in places)
    assert len({(y % h, x % w) for _, _, y, x, h, w in places}) > 1


def test_jittered_windows_see_their_hint_crop(model, conds):
    latent = rt.empty_latent(2 * PATCH, 2 * PATCH)
    control_net, hint = tiny_controlnet(model), hints(seed=1)
    calls, places, report = run_with_one_controlnet(model, conds, latent, control_net, hint,
                                                    window_jitter=True, window_batch_size=4)
    height, width = latent["samples"].shape[-2:]
    assert len(places) == 2 * 9 * report.plan.stage2_steps   # 3x3 windows, cond + uncond
    assert all(y + h <= height and x + w <= width for _, _, y, x, h, w in places)   # inside the latent
    grid = {(y, x) for y in reference_windows(height, NATIVE, NATIVE // 2)
            for x in reference_windows(width, NATIVE, NATIVE // 2)}
    assert any((y, x) not in grid for _, _, y, x, _, _ in places), "jitter moved no window"


def test_batch_images_see_their_own_hint(model, conds):
    latent = rt.empty_latent(2 * PATCH, 3 * PATCH // 2, batch=2)   # 48x64 latent: 2x2 patches, 2x3 windows
    control_net, hint = tiny_controlnet(model), hints(batch=2, seed=2)
    calls, places, report = run_with_one_controlnet(model, conds, latent, control_net, hint,
                                                    window_jitter=False, window_batch_size=1)
    assert {b for _, b, *_ in places} == {0, 1}
    windows = len(reference_windows(3 * NATIVE // 2, NATIVE, NATIVE // 2)) * len(reference_windows(2 * NATIVE, NATIVE,
                                                                                                  NATIVE // 2))
    assert windows == 6 and len(places) == 2 * 2 * windows * report.plan.stage2_steps   # images x cond/uncond
    # Stage 1 (one patch of both images a call, cond then uncond): image b's whole hint at patch size.
    grid = report.plan.grid
    patch_hint = comfy.utils.common_upscale(hint, grid.patch_w * SCALE, grid.patch_h * SCALE, "nearest-exact",
                                            "center")
    stage1 = calls[:report.plan.stage1_steps * grid.n]
    assert stage1 and all(x.shape[-2:] == (grid.patch_h, grid.patch_w) for _, x, _ in stage1)
    for _, x, item_hints in stage1:
        assert x.shape[0] == 4
        for k, item_hint in enumerate(item_hints):
            assert torch.equal(item_hint, patch_hint[k % 2])


def test_chained_controlnets_each_see_their_crop(model, conds):
    latent = rt.empty_latent(2 * PATCH, 2 * PATCH)
    first, second = tiny_controlnet(model, seed=5), tiny_controlnet(model, seed=6)
    first_hint, second_hint = hints(seed=3), hints(seed=4, size=(256, 192))
    chained = apply_control(apply_control(conds, first, first_hint), second, second_hint)
    assert chained[0][0][1]["control"].previous_controlnet is not None   # really a chain
    first_calls, second_calls = ControlCalls(first), ControlCalls(second)
    try:
        _, trace, report = run(model, chained, latent, stage2_mode="shifted", window_batch_size=2)
    finally:
        first_calls.close()
        second_calls.close()
    windows = 2 * 4 * report.plan.stage2_steps
    for calls, hint in ((first_calls, first_hint), (second_calls, second_hint)):
        places = check_stage2_hints(model, trace, report, calls.calls, full_size(hint, latent))
        assert len(places) == windows


def hint_place(item_hint, full):
    """(y, x) in latent px: where `full` [3, H, W], rolled, starts with `item_hint` [3, h, w]."""
    blocks = F.unfold(full[None], SCALE, stride=SCALE)[0]          # [3 * 8 * 8, H/8 * W/8]
    corner = item_hint[:, :SCALE, :SCALE].reshape(-1, 1)
    matches = (blocks == corner).all(0).nonzero().flatten().tolist()
    assert len(matches) == 1, matches                               # random hints: one place
    y, x = divmod(matches[0], full.shape[-1] // SCALE)
    h, w = item_hint.shape[-2:]
    assert torch.equal(item_hint, torch.roll(full, (-y * SCALE, -x * SCALE), (-2, -1))[:, :h, :w])
    return y, x


def test_native_first_layout_pass_sees_the_whole_hint_and_the_tiles_their_crops(model, conds):
    """The default layout with a ControlNet: the layout pass (native area, ComfyUI's own sampling)
    sees the whole hint at its size; at the target size each shifted tile sees its rolled crop of
    the full-size hint, and the guidance patches the whole hint at patch size."""
    latent = rt.empty_latent(2 * PATCH, 2 * PATCH)
    control_net, hint = tiny_controlnet(model), hints(seed=7)
    calls = ControlCalls(control_net)
    try:
        _, report = run_cut(model, latent, seed=5, steps=STEPS, conds=apply_control(conds, control_net, hint),
                            patch_size=PATCH, layout="native first", target_pass="tiles", layout_denoise=0.3)
    finally:
        calls.close()
    first, plan = report.layout, report.plan
    assert (first.height, first.width) == (NATIVE, NATIVE) and plan.guided
    layout_calls, target_calls = calls.calls[:first.steps], calls.calls[first.steps:]
    whole = comfy.utils.common_upscale(hint, PATCH, PATCH, "nearest-exact", "center")[0]   # layout size = patch size
    for _, x, layout_hint in layout_calls:
        assert x.shape == (2, 4, NATIVE, NATIVE)
        assert all(torch.equal(item, whole) for item in layout_hint)
    tiles = [c for c in target_calls if c[2].shape[0] > 1]      # one hint per tile item
    guides = [c for c in target_calls if c[2].shape[0] == 1]    # the stage-1 patches: one hint, broadcast
    assert len(tiles) == len(guides) == plan.stage2_steps == STEPS - first.refine_from
    full = full_size(hint, latent)[0]
    for (_, x, tile_hints), (_, _, guide_hint) in zip(tiles, guides):
        places = {hint_place(item, full) for item in tile_hints}
        assert x.shape[0] == 8 and len(places) == 4             # 4 tiles x cond/uncond, each its own crop
        assert len({(y % NATIVE, x0 % NATIVE) for y, x0 in places}) == 1   # one shift moves them all
        assert torch.equal(guide_hint[0], whole)
