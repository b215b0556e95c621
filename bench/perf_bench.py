"""Speed and memory of CutDiffusion against its peers, in one process and run (issue 8).

    .venv/bin/python bench/perf_bench.py                       # full run, writes BENCHMARKS.md
    .venv/bin/python bench/perf_bench.py --steps 3 --sizes 2x --repeats 1 --no-write   # smoke run

For each target size and method (direct inference at the target size, MultiDiffusion = the patch
with stage_split 0 and the same stride, the paper's CutDiffusion with overlapping and with shifted
stage-2 windows, the pack's default (native first), each also with AdaptiveDiffusion) it measures:

- model evaluations per image: images through the UNet, counted by a hook on the torch module
  (not by the pack's own report), next to what the plan says;
- wall time of the KSampler code path: one short warm-up run per method and size, then the
  median of --repeats runs, interleaved across methods so a change of machine load hits all alike;
- the time ratio against MultiDiffusion of the same run, next to the evaluation ratio: where
  nothing but the model costs time, the two are equal;
- the fraction of the time spent outside the UNet's forward (our patches, ComfyUI's sampler and
  CFG, conditioning): forward pre/post hooks with time.perf_counter (and torch.cuda.synchronize on
  a GPU, so queued work is charged to whoever queued it);
- peak memory: on a GPU torch.cuda.max_memory_allocated above the allocation before the run (the
  weights); on CPU the peak of torch's CPU allocator during one more run, from the profiler's
  allocation events (tracemalloc cannot see torch's allocator, and peak RSS proved too noisy on
  the tiny model: see cpu_peak_mib).

CPU: the tiny SDXL test UNet (random weights, float32) with 256 px patches, 20 steps.
CUDA: a full-size SDXL UNet (real architecture, random weights, fp16) at 2048^2 and 4096^2,
50 steps, euler, cfg 7.5, so the figures compare with the paper's RTX 3090 setting.
--model flux-dev (issue 15): a full-size Flux.1-dev transformer (12 B parameters, random weights,
bf16) on CUDA, the tests' tiny Flux on CPU; 28 steps, euler/simple, cfg 1 with Flux guidance 3.5
and ComfyUI's ModelSamplingFlux shift for the target size, as Flux workflows run it.
Sizes are area multiples of the native size ("2x", "4x", "9x", ...) or "pano" (2:1).

A forward pass costs the same whatever the weights are, so random weights time like real ones.
"""
from __future__ import annotations

import argparse
import datetime
import math
import os
import re
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
from cutdiff_dev import comfy_runtime as rt  # noqa: E402  (no comfy import may come before rt.bootstrap())
from cutdiff_dev import tiny_dit as td  # noqa: E402
from report import write_section  # noqa: E402

SECTIONS = {"sdxl": "## Speed and memory (issue 8)", "flux-dev": "## Speed and memory on Flux.1-dev (issue 15)"}
BASELINE = "multidiffusion"
WARMUP_STEPS = 2  # enough to run every code path and tensor shape once (one step per stage)
PX_PER_LATENT = 8  # every size must be a multiple of it

# The UNet config comfy.model_detection reports for an SDXL base checkpoint.
SDXL_UNET = {
    "use_checkpoint": False, "image_size": 32, "out_channels": 4, "use_spatial_transformer": True, "legacy": False,
    "num_classes": "sequential", "adm_in_channels": 2816, "in_channels": 4, "model_channels": 320,
    "num_res_blocks": [2, 2, 2], "transformer_depth": [0, 0, 2, 2, 10, 10], "channel_mult": [1, 2, 4],
    "transformer_depth_middle": 10, "use_linear_in_transformer": True, "context_dim": 2048, "num_head_channels": 64,
    "transformer_depth_output": [0, 0, 0, 2, 2, 2, 10, 10, 10], "use_temporal_attention": False,
    "use_temporal_resblock": False,
}

# The transformer config comfy.model_detection reports for a Flux.1-dev checkpoint.
FLUX_DEV = {
    "image_model": "flux", "guidance_embed": True, "in_channels": 16, "out_channels": 16, "patch_size": 2,
    "vec_in_dim": 768, "context_in_dim": 4096, "hidden_size": 3072, "mlp_ratio": 4.0, "num_heads": 24,
    "depth": 19, "depth_single_blocks": 38, "axes_dim": [16, 56, 56], "theta": 10000, "qkv_bias": True,
}
FLUX_T5_TOKENS = 256  # ComfyUI pads a Flux prompt's T5 tokens to at least 256 (a short prompt)


@dataclass(frozen=True)
class Method:
    key: str
    label: str
    cut: dict | None    # CutDiffusionConfig fields; None = direct inference (the unpatched model)
    adaptive: bool = False


def all_methods() -> list[Method]:
    paper = {"layout": "patches"}
    base = [Method("direct", "Direct inference", None),
            Method(BASELINE, "MultiDiffusion", {**paper, "stage_split": 0.0}),
            Method("cut-overlap", "CutDiffusion, overlap", {**paper, "stage2_mode": "overlap"}),
            Method("cut-shifted", "CutDiffusion, shifted", {**paper, "stage2_mode": "shifted"}),
            Method("default", "The pack's default (native first)", {})]
    return base + [Method(m.key + "+ad", m.label + " + AdaptiveDiffusion", m.cut, True) for m in base]


def target_px(size: str, native_px: int) -> tuple[int, int]:
    """(width, height) in px: "pano" = 2:1 at native height; "Kx" = K times the native area."""
    if size == "pano":
        return 2 * native_px, native_px
    area = int(size.rstrip("x"))
    side = round(native_px * math.sqrt(area) / PX_PER_LATENT) * PX_PER_LATENT
    return side, side


# --------------------------------------------------------------------------- the bench


class UNetMeter:
    """Images through the UNet and time inside its forward, from hooks on the torch module."""

    def __init__(self, model, sync):
        unet = model.model.diffusion_model
        self._sync = sync
        unet.register_forward_pre_hook(self._enter, with_kwargs=True)
        unet.register_forward_hook(self._leave)
        self.reset()

    def reset(self) -> None:
        self.images, self.calls, self.max_batch, self.inside_s, self._start = 0, 0, 0, 0.0, 0.0

    def _enter(self, module, args, kwargs):
        x = args[0] if args else kwargs["x"]
        self.images += x.shape[0]
        self.calls += 1
        self.max_batch = max(self.max_batch, x.shape[0])
        self._sync()
        self._start = time.perf_counter()

    def _leave(self, module, args, output):
        self._sync()
        self.inside_s += time.perf_counter() - self._start


@dataclass
class Result:
    method: Method
    steps: int = 0
    evals: int = 0              # images through the UNet per generated image (both CFG halves)
    plan_evals: int = 0         # what the plan says, without AdaptiveDiffusion's skips
    calls: int = 0              # UNet forward calls: few large batches use a GPU best
    max_batch: int = 0          # largest UNet batch: what the peak memory follows
    walls: list[float] = field(default_factory=list)
    phases: tuple | None = None  # steps per phase (stage, pass) as run and at the full step count
    full_walls: list = field(default_factory=list)   # estimated wall times at the full step count
    outside: list[float] = field(default_factory=list)
    peak_mib: float | None = None


class Bench:
    def __init__(self, args):
        self.args = args
        self.gpu = args.device == "cuda"
        # A GPU machine may hold only torch: sample on ComfyUI's model-management layer without
        # importing its nodes and executor (which need PyAV & co. and play no part in the timing).
        rt.bootstrap(gpu=self.gpu, executor=False)
        import comfy.utils
        comfy.utils.set_progress_bar_enabled(False)  # tqdm output and its cost are no part of what we measure
        self.flux = args.model == "flux-dev"
        self.native_px = 1024 if self.gpu else 256
        if self.flux:
            self.model = full_size_model("Flux", FLUX_DEV, torch.bfloat16) if self.gpu else td.tiny_flux(args.seed)
            widths = dict(tokens=FLUX_T5_TOKENS, context_dim=FLUX_DEV["context_in_dim"],
                          pooled_dim=FLUX_DEV["vec_in_dim"]) if self.gpu else {}
            self.conds = td.flux_conds(seed=args.seed, guidance=args.flux_guidance, **widths)
        elif self.gpu:
            self.model = full_size_model("SDXL", SDXL_UNET, torch.float16)
            self.conds = rt.tiny_conds(seed=args.seed, tokens=77, context_dim=2048)
        else:
            self.model = rt.tiny_sdxl(seed=args.seed)
            self.conds = rt.tiny_conds(seed=args.seed)
        self._sync = torch.cuda.synchronize if self.gpu else (lambda: None)
        self.meter = UNetMeter(self.model, self._sync)

    def base_model(self, size: str):
        """The model as a workflow loads it for a target size (Flux: with ModelSamplingFlux's shift)."""
        return with_flux_shift(self.model, *target_px(size, self.native_px)) if self.flux else self.model

    def patched(self, method: Method, size: str):
        """(model, CutDiffusion RunReport or None) for a method, patched as a user's graph would be
        (Flux: ModelSamplingFlux for the target size first)."""
        from cutdiff_core.adaptive import AdaptiveConfig
        from cutdiff_core.adaptive_patch import apply_adaptive
        from cutdiff_core.cutdiffusion_patch import RunReport, apply_cutdiffusion
        model, report = self.base_model(size), None
        if method.cut is not None:
            report = RunReport()
            model = apply_cutdiffusion(model, self.config(method), report)
        if method.adaptive:
            model = apply_adaptive(model, AdaptiveConfig())
        return model, report

    def run(self, model, size: str, steps: int) -> float:
        """One sampling run along KSampler's code path (comfy.sample.sample with ComfyUI's noise);
        returns its wall time, and leaves each step's time in self.step_s (from the sampler's step
        callback: the run's setup counts to the first step)."""
        import comfy.sample

        width, height = target_px(size, self.native_px)
        pos, neg = self.conds
        a = self.args
        latent = (td.empty_latent if self.flux else rt.empty_latent)(width, height)["samples"]
        latent = comfy.sample.fix_empty_latent_channels(model, latent)
        noise = comfy.sample.prepare_noise(latent, a.seed)
        step_ends = []

        def step_done(*_):
            self._sync()
            step_ends.append(time.perf_counter())

        self.meter.reset()
        self._sync()
        start = time.perf_counter()
        with torch.inference_mode():  # as ComfyUI's executor runs nodes
            comfy.sample.sample(model, noise, steps, a.cfg, a.sampler, a.scheduler, pos, neg, latent, denoise=1.0,
                                callback=step_done, disable_pbar=True, seed=a.seed)
        self._sync()
        end = time.perf_counter()
        self.step_s = [t1 - t0 for t0, t1 in zip([start, *step_ends], step_ends)]
        return end - start

    def phase_steps(self, method: Method, size: str, steps: int) -> list[int]:
        """The steps of each phase of a run, in the order the sampler makes them: direct inference
        and MultiDiffusion one; the paper's stage 1 and stage 2; native first's layout pass (all
        steps) and target pass. From the pack's own planning, so it holds for any step count."""
        import comfy.samplers
        from cutdiff_core.config import plan_run
        from cutdiff_core.layout import native_first

        if method.cut is None:
            return [steps]
        config = self.config(method)
        width, height = (px // PX_PER_LATENT for px in target_px(size, self.native_px))
        native = self.native_px // PX_PER_LATENT
        if config.layout == "native first":
            first = native_first(height, width, native, steps, config.layout_denoise)
            return [steps] if first is None or first.is_whole_run else [first.steps, first.steps - first.refine_from]
        sampling = self.base_model(size).get_model_object("model_sampling")
        sigmas = [float(s) for s in comfy.samplers.calculate_sigmas(sampling, self.args.scheduler, steps)]
        plan = plan_run(config, height=height, width=width, native_px=self.native_px, sigmas=sigmas,
                        split_sigma=float(sampling.percent_to_sigma(config.stage_split)))
        return [n for n in (plan.stage1_steps, plan.stage2_steps) if n]

    def config(self, method: Method):
        from cutdiff_core.cutdiffusion_patch import CutDiffusionConfig
        return CutDiffusionConfig(patch_size=self.native_px, window_stride=self.args.stride,
                                  window_batch_size=self.args.window_batch, **method.cut)

    def measure_size(self, size: str, methods: list[Method], deadline: float | None = None) -> list[Result]:
        """Time every method at one size. With a `deadline` (perf_counter seconds), the step count
        is lowered, where needed, to what the warm-up runs say fits before it."""
        a = self.args
        models = [self.patched(m, size) for m in methods]
        results = [Result(m) for m in methods]
        warm_steps = min(WARMUP_STEPS, a.steps)
        per_step = sum(self.run(model, size, warm_steps) / warm_steps for model, _ in models)
        if self.gpu and self.model.model.model_lowvram:  # weights streamed per layer: not the model's speed
            raise RuntimeError("ComfyUI loaded the UNet only partially (lowvram); free GPU memory first")
        steps = a.steps
        if deadline is not None:
            runs = a.repeats + (0 if self.gpu or not a.memory else 1)
            # The warm-up includes one-off costs (kernel selection, allocator growth), so this errs short.
            steps = min(steps, int(0.9 * (deadline - time.perf_counter()) / (runs * per_step)))
            if steps < 2:
                print(f"  {size}: skipped, {per_step:.1f} s per step of all methods does not fit the budget",
                      file=sys.stderr, flush=True)
                return []
            if steps < a.steps:
                print(f"  {size}: {steps} steps to fit the budget", file=sys.stderr, flush=True)
        for result in results:
            result.steps = steps
            if steps < a.steps:
                result.phases = (self.phase_steps(result.method, size, steps),
                                 self.phase_steps(result.method, size, a.steps))
        for repeat in range(a.repeats):
            for result, (model, report) in zip(results, models):
                if self.gpu and repeat == 0:
                    wall, result.peak_mib = gpu_peak_mib(lambda: self.run(model, size, steps))
                else:
                    wall = self.run(model, size, steps)
                result.walls.append(wall)
                if result.phases:
                    result.full_walls.append(full_run_estimate(wall, self.step_s, *result.phases))
                print(f"  {size} {result.method.label}: {wall:.2f} s, {self.meter.images} UNet images",
                      file=sys.stderr, flush=True)
                result.outside.append(max(0.0, wall - self.meter.inside_s) / wall)
                result.evals, result.calls, result.max_batch = self.meter.images, self.meter.calls, self.meter.max_batch
                result.plan_evals = plan_evaluations(report, steps, cfg_halves(a.cfg))
        if not self.gpu and a.memory:  # a separate run: the profiler slows what it watches
            for result, (model, _) in zip(results, models):
                result.peak_mib = cpu_peak_mib(lambda: self.run(model, size, steps))
        return results

    def peak_only(self, size: str, methods: list[Method]) -> list[Result]:
        """Peak memory of a short run (one step per stage: each stage's largest batch is reached)."""
        results = []
        for method in methods:
            model, _ = self.patched(method, size)
            result = Result(method, steps=WARMUP_STEPS)
            if self.gpu:
                self.run(model, size, WARMUP_STEPS)  # allocator growth and kernel choice out of the way
                _, result.peak_mib = gpu_peak_mib(lambda: self.run(model, size, WARMUP_STEPS))
            else:
                result.peak_mib = cpu_peak_mib(lambda: self.run(model, size, WARMUP_STEPS))
            results.append(result)
        return results


def full_run_estimate(wall: float, step_s: list[float], run_phases: list[int], full_phases: list[int]) -> float | None:
    """The wall time a run would take with its phases at their full step counts: the measured wall
    plus each phase's missing steps at that phase's median step time (a step costs the same within
    a phase: same views, same batches). None where the steps do not match the phases."""
    if sum(run_phases) != len(step_s) or len(run_phases) != len(full_phases):
        return None
    estimate, start = wall, 0
    for ran, full in zip(run_phases, full_phases):
        estimate += (full - ran) * statistics.median(step_s[start:start + ran])
        start += ran
    return estimate


def cfg_halves(cfg: float) -> int:
    """Images per window and step: ComfyUI leaves out the negative prompt at cfg 1."""
    return 1 if math.isclose(cfg, 1.0) else 2


def plan_evaluations(report, steps: int, halves: int) -> int:
    """Spec 3.6 from the run's own plan (per CFG half, one image, first-order sampler):
    T1 * n + the stage-2 windows actually drawn (shifted tiles vary per step), + n per stage-2
    step with global guidance, + one image per layout-pass step (native first); direct: T."""
    if report is None:
        return halves * steps
    plan = report.plan
    guided = plan.stage2_steps * plan.grid.n if plan.guided else 0
    layout = report.layout.steps if report.layout is not None else 0
    return halves * (layout + plan.stage1_steps * plan.grid.n + sum(report.stage2_windows_per_step) + guided)


def full_size_model(family: str, unet_config: dict, dtype):
    """A full-size model of a family (comfy.supported_models / comfy.model_base class name) with
    random weights, made directly on the GPU: normal_ on the device avoids building billions of
    parameters on the host."""
    import comfy.model_base
    import comfy.model_management as mm
    import comfy.model_patcher
    import comfy.supported_models

    if unet_config.get("image_model") == "flux":
        unet_config = td.flux1_config(unet_config)
    config = getattr(comfy.supported_models, family)(dict(unet_config))
    config.set_inference_dtype(dtype, None)
    device = mm.get_torch_device()
    model = getattr(comfy.model_base, family)(config, device=device)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.02)
    return comfy.model_patcher.ModelPatcher(model, load_device=device, offload_device=mm.unet_offload_device())


def with_flux_shift(model, width_px: int, height_px: int):
    """What ComfyUI's ModelSamplingFlux node does for a target size (its default shifts), without
    importing ComfyUI's nodes (the GPU machine runs the bench on the model-management layer)."""
    import comfy.model_sampling

    class ModelSamplingFluxShifted(comfy.model_sampling.ModelSamplingFlux, comfy.model_sampling.CONST):
        pass

    sampling = ModelSamplingFluxShifted(model.model.model_config)
    sampling.set_parameters(shift=td.flux_node_shift(width_px, height_px))
    patched = model.clone()
    patched.add_object_patch("model_sampling", sampling)
    return patched


# --------------------------------------------------------------------------- memory


def gpu_peak_mib(run):
    """(run()'s result, CUDA peak allocated during it above the allocation before it, in MiB)."""
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    value = run()
    return value, (torch.cuda.max_memory_allocated() - before) / 2 ** 20


def cpu_peak_mib(run) -> float:
    """Peak of the bytes held by torch's CPU allocator during `run()`, above what it held before.

    The CPU analogue of CUDA's max_memory_allocated: the profiler's allocation events carry the
    allocator's running total. It counts tensor memory only (not the interpreter, libraries or
    oneDNN scratch), so it is exact and repeatable where the process's peak RSS is not: on the
    tiny model the RSS growth of one and the same run in fresh processes varied up to 2x, because
    glibc keeps and reuses freed blocks.
    """
    from torch._C._profiler import _EventType

    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True) as prof:
        run()
    allocations = []
    events = list(prof.profiler.kineto_results.experimental_event_tree())
    while events:
        event = events.pop()
        events.extend(event.children)
        if event.tag == _EventType.Allocation and event.extra_fields.device.type == "cpu":
            allocations.append((event.start_time_ns, event.extra_fields.alloc_size, event.extra_fields.total_allocated))
    if not allocations:
        return 0.0
    allocations.sort()
    _, first_size, first_total = allocations[0]
    return (max(total for _, _, total in allocations) - (first_total - first_size)) / 2 ** 20


# --------------------------------------------------------------------------- report


def machine_lines(args) -> list[str]:
    import comfyui_version

    cpu = "unknown CPU"
    with open("/proc/cpuinfo") as f:
        match = re.search(r"^model name\s*:\s*(.+)$", f.read(), re.M)
        if match:
            cpu = match.group(1).strip()
    lines = [f"- date: {datetime.datetime.now().astimezone():%Y-%m-%d %H:%M %Z}",
             f"- CPU: {cpu}, {len(os.sched_getaffinity(0))} cores available, torch threads {torch.get_num_threads()}, "
             f"load average at start {os.getloadavg()[0]:.1f}"]
    if args.device == "cuda":
        props = torch.cuda.get_device_properties(0)
        lines.append(f"- GPU: {torch.cuda.get_device_name(0)}, {props.total_memory / 2 ** 30:.0f} GiB")
    lines.append(f"- torch {torch.__version__}, ComfyUI {comfyui_version.__version__}")
    return lines


def setup_lines(args, bench: Bench) -> list[str]:
    if bench.flux:
        model = ("full-size Flux.1-dev transformer (12 B parameters, random weights), bf16, on the GPU" if bench.gpu
                 else "tiny Flux test transformer (cutdiff_dev.tiny_dit.tiny_flux, random weights), float32, on the CPU")
        model += f"; Flux guidance {args.flux_guidance}, ModelSamplingFlux shift for each target size"
    else:
        model = ("full-size SDXL UNet (2.6 B parameters, random weights), fp16, on the GPU" if bench.gpu else
                 "tiny SDXL test UNet (cutdiff_dev.comfy_runtime.tiny_sdxl, random weights), float32, on the CPU")
    stride = args.stride or bench.native_px // 2
    memory = ("CUDA max_memory_allocated during the first measured run, above the allocation before it (weights)"
              if bench.gpu else "peak of torch's CPU allocator (tensor memory; torch.profiler allocation events) "
                                "during one more run per method and size, above what it held before")
    if not bench.gpu and not args.memory:
        memory = "not measured (--no-memory)"
    lines = [f"- model: {model}; native (patch) size {bench.native_px} px, window stride {stride} px, window batch "
             f"{args.window_batch or 'auto'}",
             f"- sampling: {args.steps} steps (fewer where a table says so: --budget-s), {args.sampler}/{args.scheduler}, "
             f"cfg {args.cfg}, seed {args.seed}, "
             f"batch 1; wall time = median of {args.repeats} run(s) after a {WARMUP_STEPS}-step warm-up per method",
             f"- peak memory: {memory}"]
    lines.append(f"- command: `{' '.join(['python bench/perf_bench.py', *sys.argv[1:]])}`")
    return lines


def _fmt(value, spec: str, empty: str = "—") -> str:
    return empty if value is None else format(value, spec)


def size_table(size: str, native_px: int, results: list[Result], full_steps: int) -> list[str]:
    width, height = target_px(size, native_px)
    base = next((r for r in results if r.method.key == BASELINE), None)
    base_wall = statistics.median(base.walls) if base else None
    steps = results[0].steps
    scaled = steps < full_steps  # a budget cut the steps: also say what the full count would take
    lines = [f"### {width}x{height} px ({size}{' area' if size != 'pano' else ''}), {steps} steps", ""]
    if scaled:
        lines += [f"{steps} of {full_steps} steps fitted the time budget; \"s at {full_steps}\" adds to each measured "
                  f"wall time the steps it lacks, each phase's (stage 1 / stage 2, layout / target pass) at that "
                  f"phase's median step time in this run (a step costs the same within a phase: same views, same "
                  f"batches). Phases' steps as run -> at {full_steps}: "
                  + "; ".join(f"{r.method.label} {'+'.join(map(str, r.phases[0]))} -> {'+'.join(map(str, r.phases[1]))}"
                              for r in results if r.phases), ""]
    lines += ["| method | UNet evals / image | plan | UNet calls | max batch | wall s "
              + (f"| s at {full_steps} (est.) " if scaled else "")
              + "| time vs MD | evals vs MD | plan evals vs MD | time vs evals | outside UNet | peak MiB |",
              "|---|---:|---:|---:|---:|---:|" + ("---:|" if scaled else "") + "---:|---:|---:|---:|---:|---:|"]
    for r in results:
        wall = statistics.median(r.walls)
        time_ratio = wall / base_wall if base else None
        tiled = r.method.cut is not None  # evaluation counts only compare between window/patch methods
        eval_ratio = r.evals / base.evals if base and tiled else None
        plan_ratio = r.plan_evals / base.plan_evals if base and tiled else None
        excess = time_ratio / eval_ratio - 1 if eval_ratio else None
        mismatch = " (!)" if not r.method.adaptive and r.evals != r.plan_evals else ""
        full = [w for w in r.full_walls if w is not None]
        estimate = f"| {_fmt(statistics.median(full) if full else None, '.1f')} " if scaled else ""
        lines.append(
            f"| {r.method.label} | {r.evals}{mismatch} | {r.plan_evals} | {r.calls} | {r.max_batch} | {wall:.2f} "
            f"{estimate}| {_fmt(time_ratio, '.3f')} | {_fmt(eval_ratio, '.3f')} | {_fmt(plan_ratio, '.3f')} "
            f"| {_fmt(excess, '+.1%')} | {statistics.median(r.outside):.1%} | {_fmt(r.peak_mib, '.1f')} |")
    return lines + [""]


def memory_table(native_px: int, by_size: dict[str, list[Result]]) -> list[str]:
    sizes = sorted((s for s, results in by_size.items() if results),
                   key=lambda s: math.prod(target_px(s, native_px)))
    if not sizes:
        return []
    header = " | ".join("{}x{}".format(*target_px(s, native_px)) + f" ({s})" for s in sizes)
    lines = ["### Peak memory by target size (MiB)", "", f"| method | {header} |",
             "|---|" + "---:|" * len(sizes)]
    labels = list(dict.fromkeys(r.method.label for s in sizes for r in by_size[s]))
    for label in labels:
        peaks = [next((r.peak_mib for r in by_size[s] if r.method.label == label), None) for s in sizes]
        lines.append(f"| {label} | {' | '.join(_fmt(p, '.1f') for p in peaks)} |")
    return lines + [""]


LEGEND = ("UNet evals / image: images through the UNet (or DiT) per generated image, both CFG halves (one at "
          "cfg 1), counted by a hook on the torch module; plan: the same from the run's plan (spec 3.6, first-order "
          "samplers; native first adds one image per layout-pass step; "
          "AdaptiveDiffusion rows count skips, the plan does not; (!) marks a mismatch). UNet calls / max batch: "
          "forward calls per image and the largest batch of one. time vs MD: wall time over MultiDiffusion's in "
          "this run; evals vs MD: the same for counted evaluations; time vs evals: how much more the time ratio "
          "is than the evaluation ratio (0% = nothing but the model costs time; target within 5%). outside UNet: "
          "share of the wall time not inside the UNet's forward (our patches, ComfyUI's sampler, CFG and "
          "conditioning; the direct-inference row is ComfyUI's own share). Peak memory of sizes without a table of "
          f"their own (--memory-sizes) comes from one {WARMUP_STEPS}-step run (one step per stage).")


# --------------------------------------------------------------------------- main


def parse_args(argv=None):
    cuda = torch.cuda.is_available()
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", choices=sorted(SECTIONS), default="sdxl",
                   help="sdxl (default) or flux-dev: full size on a GPU, the tests' tiny model on CPU")
    p.add_argument("--sizes", help="comma list of area multiples of the native size (2x, 4x, 9x, 16x, ...) and/or "
                                   "pano (2:1); default: 2x,4x,9x,pano on CPU, 4x,16x (2048^2, 4096^2) on a GPU")
    p.add_argument("--methods", help="comma list of " + ", ".join(m.key for m in all_methods()) + " (default: all)")
    p.add_argument("--steps", type=int, help="sampling steps (default 20 on CPU, 50 on a GPU (Flux 28); 10 with "
                                              "--quick)")
    p.add_argument("--quick", action="store_true", help="10 steps unless --steps is given")
    p.add_argument("--repeats", type=int, help="timed runs per method and size, the median is reported (default 3 on "
                                                "CPU, 1 on a GPU: a quiet device, and a 4096^2 run takes minutes)")
    p.add_argument("--cfg", type=float, help="default 7.5 (SDXL), 1.0 (Flux.1-dev: guidance-distilled)")
    p.add_argument("--flux-guidance", type=float, default=3.5, help="Flux guidance (FluxGuidance node)")
    p.add_argument("--sampler", default="euler")
    p.add_argument("--scheduler", help="default normal (SDXL), simple (Flux)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--stride", type=int, default=0, help="window stride in px (0 = half the patch size)")
    p.add_argument("--window-batch", type=int, default=0, help="window_batch_size (0 = automatic)")
    p.add_argument("--memory-sizes", default="",
                   help="comma list of further sizes measured for peak memory only (one short run per method)")
    p.add_argument("--budget-s", type=float, default=0.0,
                   help="wall-time budget of the whole run in seconds (0 = none), shared equally by the sizes "
                        "still to measure: a size whose runs would not fit gets fewer steps (said in its table), "
                        "or is skipped")
    p.add_argument("--cpu", action="store_true", help="run the CPU benchmark even where CUDA is available")
    p.add_argument("--memory", action=argparse.BooleanOptionalAction, default=True,
                   help="measure CPU peak memory (one more, profiled run per method and size)")
    p.add_argument("--output", type=Path, default=REPO / "BENCHMARKS.md")
    p.add_argument("--no-write", action="store_true", help="print the tables only")
    args = p.parse_args(argv)
    args.device = "cuda" if cuda and not args.cpu else "cpu"
    flux = args.model == "flux-dev"
    args.steps = args.steps or (10 if args.quick else (28 if flux else 50) if args.device == "cuda" else 20)
    args.cfg = args.cfg if args.cfg is not None else 1.0 if flux else 7.5
    args.scheduler = args.scheduler or ("simple" if flux else "normal")
    args.repeats = args.repeats or (1 if args.device == "cuda" else 3)
    if args.steps < 2:
        p.error("--steps must be at least 2: one step per CutDiffusion stage")
    if args.sizes is None:
        args.sizes = "4x,16x" if args.device == "cuda" else "2x,4x,9x,pano"
    args.sizes = [s for s in args.sizes.split(",") if s]  # "" = memory sizes only
    args.memory_sizes = [s for s in args.memory_sizes.split(",") if s]
    for size in args.sizes + args.memory_sizes:
        if not re.fullmatch(r"pano|[1-9][0-9]*x", size):
            p.error(f"unknown size {size!r}")
    keys = [m.key for m in all_methods()]
    args.methods = (args.methods or ",".join(keys)).split(",")
    for key in args.methods:
        if key not in keys:
            p.error(f"unknown method {key!r}")
    return args


def report_body(args, bench: Bench, timed: dict, peaks: dict) -> str:
    lines = ["Written by `bench/perf_bench.py`.", "", *machine_lines(args), *setup_lines(args, bench), "", LEGEND, ""]
    for size, results in timed.items():
        if results:
            lines += size_table(size, bench.native_px, results, args.steps)
    if bench.gpu or args.memory:
        lines += memory_table(bench.native_px, {**timed, **peaks})
    return "\n".join(lines)


def main(argv=None) -> None:
    started = time.perf_counter()
    args = parse_args(argv)
    deadline = started + args.budget_s if args.budget_s > 0 else None
    bench = Bench(args)
    methods = [m for m in all_methods() if m.key in args.methods]
    timed, peaks = {}, {}
    for index, size in enumerate(args.sizes):
        print(f"measuring {size} ...", file=sys.stderr, flush=True)
        # An equal share of what is left for each size still to come: a slow first size cannot
        # take the time of the later ones (what a size leaves unused passes on).
        share = None if deadline is None else time.perf_counter() + (deadline - time.perf_counter()) / (
            len(args.sizes) - index)
        timed[size] = bench.measure_size(size, methods, share)
        if not args.no_write:  # after every size: a run cut short still leaves what it measured
            write_section(SECTIONS[args.model], report_body(args, bench, timed, peaks), args.output)
    if bench.gpu or args.memory:
        for size in args.memory_sizes:
            print(f"peak memory at {size} ...", file=sys.stderr, flush=True)
            peaks[size] = bench.peak_only(size, methods)
    body = report_body(args, bench, timed, peaks)
    print(f"{SECTIONS[args.model]}\n\n{body}")
    if not args.no_write:
        write_section(SECTIONS[args.model], body, args.output)
        print(f"written to {args.output}", file=sys.stderr)


if __name__ == "__main__":
    main()
