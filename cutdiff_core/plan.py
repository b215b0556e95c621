"""The CutDiffusion plan: patch grid, stage-2 windows, stage split, costs.

Pure Python/torch; importable without ComfyUI. All sizes here are in latent
pixels unless a name says `_px`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch

LATENT_SCALE = 8  # pixels per latent pixel of SD/SDXL/Flux.1-style latents; a plan may say otherwise


# Model evaluations per step of the samplers that make more than one (KSampler's names; the
# k-diffusion functions are `sample_<name>`). A run takes them as a first guess and learns the
# real number from its step callbacks; the plan preview names them.
EVALUATIONS_PER_STEP = {
    "heun": 2, "heunpp2": 2, "dpm_2": 2, "dpm_2_ancestral": 2, "dpm_2_ancestral_RF": 2,
    "dpmpp_2s_ancestral": 2, "dpmpp_2s_ancestral_RF": 2, "dpmpp_2s_ancestral_cfg_pp": 2,
    "dpmpp_sde": 2, "dpmpp_sde_gpu": 2, "seeds_2": 2, "seeds_3": 3,
}

@dataclass(frozen=True)
class PatchGrid:
    """Stage 1: the target latent cut into `rows x cols` native-size patches.

    The paper's patch (i, j) is the strided sub-image of the full latent at
    rows `i::rows`, cols `j::cols` (spec 3.3/3.7), so the working latent must be
    exactly `rows * patch_h` by `cols * patch_w`: it is padded by `pad_h` rows
    and `pad_w` columns (at most rows-1 / cols-1) and cropped back at the end.
    """
    rows: int
    cols: int
    patch_h: int
    patch_w: int
    pad_h: int
    pad_w: int

    @property
    def n(self) -> int:
        return self.rows * self.cols

    @property
    def padded_h(self) -> int:
        return self.rows * self.patch_h

    @property
    def padded_w(self) -> int:
        return self.cols * self.patch_w


def patch_grid(height: int, width: int, native_h: int, native_w: int) -> PatchGrid:
    """Spec 3.1: `p = ceil(L / native)` patches of `ceil(L / p)` per dimension.

    A patch is the image seen at stride `p` along each axis, so with unequal `p1, p2` (any
    non-square target with square native size) the model draws a subject in proportions that
    relocation then stretches by `p2 / p1`: a 2048x1024 px (wide) SDXL image is two 1024 px
    patches, each every other column.
    """
    if min(height, width, native_h, native_w) < 1:
        raise ValueError(f"sizes must be positive, got target {height}x{width}, native {native_h}x{native_w}")
    rows, cols = math.ceil(height / native_h), math.ceil(width / native_w)
    patch_h, patch_w = math.ceil(height / rows), math.ceil(width / cols)
    return PatchGrid(rows, cols, patch_h, patch_w, rows * patch_h - height, cols * patch_w - width)


def window_starts(length: int, window: int, stride: int) -> list[int]:
    """MultiDiffusion window origins along one dimension (spec 3.4).

    `ceil((length - window) / stride) + 1` windows at `k * stride`, the last one
    snapped to end at the border. A dimension shorter than the window gets one
    window of the whole length (see `window_size`).
    """
    if stride < 1:
        raise ValueError(f"stride must be >= 1, got {stride}")
    if length <= window:
        return [0]
    count = math.ceil((length - window) / stride) + 1
    return [min(k * stride, length - window) for k in range(count)]


def window_size(length: int, window: int) -> int:
    return min(length, window)


@dataclass(frozen=True)
class Window:
    y: int
    x: int
    h: int
    w: int


STAGE2_MODES = ("overlap", "shifted")

# What stage 2 takes from the stage-1 patches (beyond the paper). global: their whole prediction
# mixed in (global_guidance, the paper's layout); layout: only what they agree on, their block means
# (layout_guidance, native first's target pass; square patch grids only); none: the paper's stage 2.
GUIDANCE_KINDS = ("none", "global", "layout")
GUIDANCE_WORDS = {"none": "", "global": " guided by the stage-1 patches",
                  "layout": " held to the layout by the stage-1 patches' block means"}


@dataclass(frozen=True)
class StepWindows:
    """One step's stage-2 windows, in the frame of the latent rolled by `-shift` (y, x)."""
    windows: list[Window]
    shift: tuple[int, int] = (0, 0)


@dataclass(frozen=True)
class WindowLayout:
    """Stage 2 over the working latent.

    `overlap`: the paper's MultiDiffusion windows (native size, `stride` apart,
    optionally jittered). `shifted`: the stage-1 patch grid as contiguous tiles
    (exactly `n`, each pixel once) over the latent rolled by a fresh random
    offset every step, so tile borders never stay in one place; the tile that
    wraps around joins opposite image edges, like circular padding.
    """
    height: int
    width: int
    win_h: int
    win_w: int
    ys: tuple[int, ...]
    xs: tuple[int, ...]
    jitter_h: int
    jitter_w: int
    mode: str = "overlap"

    @property
    def count(self) -> int:
        """Windows per step."""
        return len(self.ys) * len(self.xs)

    def step_windows(self, generator: torch.Generator) -> StepWindows:
        """One step's windows, drawing this step's random offsets from `generator`."""
        if self.mode == "shifted":
            oy = int(torch.randint(0, self.win_h, (1,), generator=generator))
            ox = int(torch.randint(0, self.win_w, (1,), generator=generator))
            return StepWindows(self.windows(), (oy, ox))
        if self.jitter_h or self.jitter_w:
            return StepWindows(self.windows(self.draw_offsets(generator)))
        return StepWindows(self.windows())

    def windows(self, offsets: torch.Tensor | None = None) -> list[Window]:
        """Windows in row-major order, each moved by `offsets[k] = (dy, dx)`.

        Border windows stay on their border and every offset is clamped so the
        window stays inside the latent: the reference zero-pads instead, but
        here no window reads outside the image and every pixel stays covered
        (interior windows move by at most a quarter of the overlap).
        """
        out = []
        for k, (y, x) in enumerate((y, x) for y in self.ys for x in self.xs):
            if offsets is not None:
                dy, dx = int(offsets[k, 0]), int(offsets[k, 1])
                y = _jittered(y, dy, self.height - self.win_h)
                x = _jittered(x, dx, self.width - self.win_w)
            out.append(Window(y, x, self.win_h, self.win_w))
        return out

    def draw_offsets(self, generator: torch.Generator) -> torch.Tensor:
        """One step's random window offsets, `[count, 2]` ints in [-jitter, jitter]."""
        dy = torch.randint(-self.jitter_h, self.jitter_h + 1, (self.count,), generator=generator)
        dx = torch.randint(-self.jitter_w, self.jitter_w + 1, (self.count,), generator=generator)
        return torch.stack([dy, dx], dim=1)


def _jittered(start: int, offset: int, last: int) -> int:
    if start == 0 or start == last:
        return start
    return max(0, min(last, start + offset))


def window_layout(height: int, width: int, window_h: int, window_w: int, stride_h: int, stride_w: int,
                  jitter: bool, mode: str = "overlap", grid: PatchGrid | None = None) -> WindowLayout:
    if mode not in STAGE2_MODES:
        raise ValueError(f"stage2_mode must be one of {STAGE2_MODES}, got {mode!r}")
    if mode == "shifted":
        grid = grid or patch_grid(height, width, window_h, window_w)
        return WindowLayout(height, width, grid.patch_h, grid.patch_w,
                            tuple(range(0, height, grid.patch_h)), tuple(range(0, width, grid.patch_w)), 0, 0, mode)
    win_h, win_w = window_size(height, window_h), window_size(width, window_w)
    # Reference: jitter of up to (window - stride) / 4, so neighbours always keep half their overlap.
    jitter_h = max(0, (win_h - stride_h) // 4) if jitter else 0
    jitter_w = max(0, (win_w - stride_w) // 4) if jitter else 0
    return WindowLayout(height, width, win_h, win_w,
                        tuple(window_starts(height, window_h, stride_h)),
                        tuple(window_starts(width, window_w, stride_w)),
                        jitter_h, jitter_w, mode)


def stage1_steps(sigmas: Sequence[float], split_sigma: float, stage_split: float, min_steps: int = 0) -> int:
    """Number of stage-1 steps (T1, the paper's T') for a run's sigma schedule.

    Spec 3.5: the split is a noise level; stage 1 runs the steps whose starting
    sigma is above `split_sigma` (= percent_to_sigma(stage_split)). A run that
    ends at zero noise and has >= 2 steps gives each stage >= 1 step when
    0 < stage_split < 1 -- except that a run starting below the split (img2img
    with a low denoise) starts in stage 2; `min_steps` then forces stage 1 to
    that many steps. A run that stops with noise left (KSamplerAdvanced's first
    node, SplitSigmas' high half) is a segment of a longer schedule and takes its
    stages from the noise levels alone, so two segments split like one run.
    """
    steps = len(sigmas) - 1
    if steps <= 0 or stage_split <= 0.0:
        return 0
    if stage_split >= 1.0:
        return steps
    t1 = 0
    while t1 < steps and float(sigmas[t1]) > split_sigma:
        t1 += 1
    # A run that starts above the split has t1 >= 1 already; keep one step for stage 2.
    if steps >= 2 and float(sigmas[-1]) <= 0.0:
        t1 = min(t1, steps - 1)
    return max(t1, min(min_steps, steps))


@dataclass(frozen=True)
class Plan:
    """Everything one sampling run needs to know about its geometry and stages."""
    height: int           # requested latent size
    width: int
    grid: PatchGrid
    layout: WindowLayout  # over the padded working latent
    steps: int
    stage1_steps: int
    guidance: str = "none"          # what stage 2 also takes from the stage-1 patches: GUIDANCE_KINDS
    latent_px: int = LATENT_SCALE   # pixels per latent pixel, for sizes said in px

    @property
    def guided(self) -> bool:
        """Stage 2 also evaluates the stage-1 patches (beyond the paper), one set per step."""
        return self.guidance != "none"

    @property
    def stage2_steps(self) -> int:
        return self.steps - self.stage1_steps

    @property
    def uses_patch_grid(self) -> bool:
        return _uses_patch_grid(self.stage1_steps, self.guided, self.layout.mode)

    @property
    def pad_h(self) -> int:
        """Rows added to the latent for this run (the grid's padding where the grid is used)."""
        return self.grid.pad_h if self.uses_patch_grid else 0

    @property
    def pad_w(self) -> int:
        return self.grid.pad_w if self.uses_patch_grid else 0

    def model_evaluations(self, batch: int = 1, cfg_batches: int = 2) -> int:
        """Spec 3.6: `T1 * n + (T - T1) * windows` images, per CFG half and batch item.

        Counts first-order samplers; a sampler with k model calls per step makes k times as many.
        """
        per_image = self.stage1_steps * self.grid.n + self.stage2_steps * self.layout.count
        if self.guided:
            per_image += self.stage2_steps * self.grid.n
        return per_image * batch * cfg_batches

    def summary(self) -> str:
        g, lay = self.grid, self.layout
        pad = f", padded by {self.pad_h}x{self.pad_w}" if self.pad_h or self.pad_w else ""
        px = self.latent_px
        size = f"{lay.win_w * px}x{lay.win_h * px} px"
        kind = "shifted tiles" if lay.mode == "shifted" else "windows"
        return (f"{self.width * px}x{self.height * px} px: stage 1 {self.stage1_steps} steps on "
                f"{g.rows}x{g.cols} patches of {g.patch_w * px}x{g.patch_h * px} px{pad}; stage 2 "
                f"{self.stage2_steps} steps on {len(lay.ys)}x{len(lay.xs)} {kind} of {size}"
                f"{GUIDANCE_WORDS[self.guidance]}; "
                f"{self.model_evaluations(cfg_batches=1)} model evaluations per image and CFG half")


def _uses_patch_grid(stage1_steps: int, guided: bool, mode: str) -> bool:
    """Whether any evaluation sees the patch grid: stage 1, global guidance or shifted tiles.
    Overlapping windows fit any size, so without one (stage_split 0, the default mode) the run
    is MultiDiffusion at the target size itself and needs no padding (spec 3.5)."""
    return stage1_steps > 0 or guided or mode == "shifted"


def make_plan(*, height: int, width: int, native: tuple[int, int], stride: tuple[int, int],
              sigmas: Sequence[float], split_sigma: float, stage_split: float, jitter: bool,
              mode: str = "overlap", min_stage1_steps: int = 0, guidance: str = "none",
              latent_px: int = LATENT_SCALE) -> Plan:
    """The plan for a `height x width` latent: patches of the model's `native` (h, w) size,
    stage-2 windows `stride` (h, w) apart, stage 1 while the noise is above `split_sigma`, stage 2
    guided by the patches as `guidance` says (none where there is one patch: it is the window)."""
    if guidance not in GUIDANCE_KINDS:
        raise ValueError(f"guidance must be one of {GUIDANCE_KINDS}, got {guidance!r}")
    native_h, native_w = native
    grid = patch_grid(height, width, native_h, native_w)
    t1 = stage1_steps(sigmas, split_sigma, stage_split, min_stage1_steps)
    guidance = guidance if grid.n > 1 else "none"   # one patch: the "global" view is the window itself
    if guidance == "layout" and grid.rows != grid.cols:
        # A non-square grid's strided views see the subject squashed and their block means stretch it
        # back (the coherence table's `gg 1` rows at 1:2 / 2:1 / 3:1).
        guidance = "none"
    padded = _uses_patch_grid(t1, guidance != "none", mode)
    work_h, work_w = (grid.padded_h, grid.padded_w) if padded else (height, width)
    layout = window_layout(work_h, work_w, native_h, native_w, *stride, jitter, mode, grid)
    return Plan(height, width, grid, layout, len(sigmas) - 1, t1, guidance, latent_px)


GLOBAL_GUIDANCE_DECAY = 0.25  # the cosine's power; how it was chosen: BENCHMARKS.md, global guidance


def global_guidance_weight(strength: float, stage2_step: int, stage2_steps: int) -> float:
    """Weight of the stage-1 patches' prediction in stage-2 step `stage2_step` (0-based).

    DemoFusion-style cosine decay, from `strength` at the first stage-2 step towards 0 at the
    end: early stage-2 steps, where windows still invent content, keep the one global layout;
    the last ones are the windows' own detail. The low power keeps the weight high for longer.
    """
    progress = stage2_step / max(1, stage2_steps)
    return strength * (0.5 * (1.0 + math.cos(math.pi * progress))) ** GLOBAL_GUIDANCE_DECAY
