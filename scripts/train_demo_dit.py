"""Train the pack's tiny demo DiT (Flux architecture, rectified flow) and write models/cutdiffusion_demo_dit.safetensors.

    .venv/bin/python scripts/train_demo_dit.py            # seed 0: the shipped file

Recorded run, the one that wrote the shipped file (seed 0, all defaults: 11000 steps, batch 24,
lr 6e-4 with 2% warm-up and cosine decay, EMA 0.998, 1 torch thread): AMD EPYC, 2 cores (the other
core and part of this one busy with other jobs' tests and benchmarks: 0.19 s per step when
alone, up to 0.33 s under load), torch 2.14.1, ComfyUI 0.3.75, 2026-11-30. 1.98 M parameters.
Training took 42.0 min; velocity loss 2.55 at step 0, 0.18 at 2000, 0.20 at 6000, 0.19 at 8000,
0.15 at 10999 (single batches, noisy; rectified flow's velocity loss keeps the irreducible noise
part, so it does not go to 0). Native size, 64 seeds over the fixed prompt spread of eval_prompt(),
20 euler steps, simple scheduler: one object in 98% at cfg 3 (none 0%, mean count 1.02), 97% at
cfg 4 and 97% at cfg 5 (mean count 1.03). The EMA checkpoint at step 1000 already drew one object
in 15 of 16 samples (cfg 4). File 3.78 MiB, sha256
102dd07a47b1b5e612efc5715acc5d60467b55610a212e563b10882960aa2f8a.
(Timing alone: --time-steps 10 measured 0.215 s per step at batch 24 before the run.)

Model (cutdiff_demo.dit): ComfyUI's own comfy.model_base.Flux with a small supported_models.Flux
config: the demo's 4 latent channels patchified 2x2 inside the model (16 features per token),
hidden 128, 2 heads of 64, RoPE axes 16/24/24, 2 double + 2 single blocks, mlp ratio 4, no
guidance embedding; the UNet demo's DemoTextEncoder class (context [B, 3, 64] as Flux's T5
features, pooled [B, 1280] as its CLIP vector), trained together with it from scratch.

Data: cutdiff_demo.data.render_batch, the UNet demo's procedural one-object images at native
size (128 px, a 16 x 16 latent = 8 x 8 tokens). Only the native-size samples are kept: the 20%
cropped from larger canvases may hold a cut-off object or none, and unlike SDXL, Flux has no
size/crop conditioning to tell the model so.

Training is rectified flow exactly as ComfyUI samples a FLUX-type model: t is drawn uniformly from
the model's own ModelSamplingFlux schedule (shift mu = 0, i.e. sigma = t), x_t = (1 - t) x0 +
t noise (CONST.noise_scaling), the prediction goes through model.apply_model and the loss is the
MSE of the velocity noise - x0 that CONST.calculate_denoised assumes (denoised = x_t - t v).
Prompts are dropped to "" 10% of the time (and single words 10% each) for CFG. AdamW, linear
warm-up and cosine decay, gradient clipping at 1, and the written weights are an exponential
moving average. At the end the written file is loaded back as cutdiff_demo.dit loads it and
sampled at native size over 64 seeds (euler, simple scheduler, 20 steps, at the --eval-cfg
values) to report how often it draws exactly one object.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from einops import rearrange, reduce

from cutdiff_dev import comfy_runtime  # noqa: E402  (the in-process ComfyUI harness; must start before comfy imports)

comfy_runtime.bootstrap()
import comfy.model_base  # noqa: E402
import comfy.utils  # noqa: E402
import safetensors.torch  # noqa: E402

from cutdiff_demo import dit as demo_dit  # noqa: E402
from cutdiff_demo import metrics as demo_metrics  # noqa: E402
from cutdiff_demo import model as dm  # noqa: E402
from cutdiff_demo.data import render_batch  # noqa: E402
from demo_training import train_with_ema  # noqa: E402  (scripts/demo_training.py)

P_DROP_PROMPT = 0.1
P_DROP_WORD = 0.1


def drop_tokens(gen, token_ids):
    """Condition dropout: the whole prompt -> "" (CFG's negative), or single words -> unspecified."""
    batch = token_ids.shape[0]
    keep = torch.rand(batch, 3, generator=gen) >= P_DROP_WORD
    keep &= (torch.rand(batch, 1, generator=gen) >= P_DROP_PROMPT)
    return token_ids * keep


def build_untrained(seed: int = 0):
    """A freshly initialised float32 demo DiT (comfy.model_base.Flux; torch's default init, Flux's
    RMSNorm scales 1, as cutdiff_dev's tiny models) and text encoder."""
    config = demo_dit.model_config(dm.DemoDecoder())
    config.set_inference_dtype(torch.float32, None)
    dit = comfy.model_base.Flux(config)
    comfy_runtime._init_weights(dit.diffusion_model, seed)
    torch.manual_seed(seed)
    return dit, dm.DemoTextEncoder()


def native_batch(gen, batch):
    """render_batch's native-size samples only (no crops of larger canvases): latents and token ids."""
    latents, tokens = [], []
    while sum(len(t) for t in tokens) < batch:
        latent, token_ids, size_cond = render_batch(gen, batch)
        native = (size_cond[:, 0] == dm.NATIVE_SIZE_PX) & (size_cond[:, 1] == dm.NATIVE_SIZE_PX)
        latents.append(latent[native])
        tokens.append(token_ids[native])
    return torch.cat(latents)[:batch], torch.cat(tokens)[:batch]


def _out_of_place(cls):
    """A subclass of a ComfyUI Flux block whose forward is the class's own source with `a += b`
    written as `a = a + b`, compiled in comfy.ldm.flux.layers' namespace. ComfyUI's class is
    untouched: only the blocks of the model being trained are given the subclass."""
    import inspect
    import re
    import textwrap
    import comfy.ldm.flux.layers as layers

    if cls not in _OUT_OF_PLACE:
        source = textwrap.dedent(inspect.getsource(cls.forward))
        source, count = re.subn(r"^(\s*)(\w+) \+= ", r"\1\2 = \2 + ", source, flags=re.M)
        assert count >= 1, f"{cls.__name__}.forward: no in-place residual found"
        namespace = {}
        exec(compile(source, f"<out-of-place {cls.__name__}.forward>", "exec"), vars(layers), namespace)
        _OUT_OF_PLACE[cls] = type(f"OutOfPlace{cls.__name__}", (cls,), {"forward": namespace["forward"]})
    return _OUT_OF_PLACE[cls]


_OUT_OF_PLACE: dict = {}


def set_block_forward(dit, out_of_place: bool) -> None:
    """Let autograd through the model's Flux blocks, which add their residuals in place (`img += ...`,
    fine for inference, an error for backward): each block instance of this model gets the
    out-of-place subclass (or its ComfyUI class back). Training process only; the shipped model
    runs ComfyUI's code unchanged (same arithmetic: check_out_of_place_blocks)."""
    import comfy.ldm.flux.layers as layers

    for block in dit.diffusion_model.modules():
        base = next((c for c in (layers.DoubleStreamBlock, layers.SingleStreamBlock) if isinstance(block, c)), None)
        if base is not None:
            block.__class__ = _out_of_place(base) if out_of_place else base


def check_out_of_place_blocks(dit, text, seed=0) -> float:
    """Largest difference between the rewritten blocks and ComfyUI's own on one batch (should be 0)."""
    gen = torch.Generator().manual_seed(seed)
    x0, token_ids = native_batch(gen, 4)
    context, pooled = text(token_ids)
    sigma = torch.full((4,), 0.5)
    with torch.no_grad():
        set_block_forward(dit, out_of_place=True)
        rewritten = dit.apply_model(x0, sigma, c_crossattn=context, y=pooled)
        set_block_forward(dit, out_of_place=False)
        original = dit.apply_model(x0, sigma, c_crossattn=context, y=pooled)
    set_block_forward(dit, out_of_place=True)
    return (rewritten - original).abs().max().item()


def loss_on_batch(dit, text, gen, batch):
    x0, token_ids = native_batch(gen, batch)
    context, pooled = text(drop_tokens(gen, token_ids))
    sigmas = dit.model_sampling.sigmas                    # ModelSamplingFlux's schedule: t = sigma
    sigma = sigmas[torch.randint(len(sigmas), (batch,), generator=gen)]
    noise = torch.randn(x0.shape, generator=gen)
    s = rearrange(sigma, "b -> b 1 1 1")
    x_t = (1 - s) * x0 + s * noise                        # CONST.noise_scaling
    denoised = dit.apply_model(x_t, sigma, c_crossattn=context, y=pooled)
    velocity = (x_t - denoised) / s                       # CONST.calculate_denoised: x_t - sigma * v
    return reduce((velocity - (noise - x0)) ** 2, "b c h w -> b", "mean").mean()


def ema_state(dit, text, ema, params):
    """The EMA weights as the file stores them (swapped in and out of the live modules)."""
    with torch.no_grad():
        live = [p.detach().clone() for p in params]
        for p, averaged in zip(params, ema):
            p.copy_(averaged)
        state = file_state(dit, text)
        for p, value in zip(params, live):
            p.copy_(value)
    return state


def train(seed, steps, batch, lr, ema_decay, checkpoint: Path | None, checkpoint_every: int):
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    dit, text = build_untrained(seed)
    print(f"rewritten blocks vs ComfyUI's: max difference {check_out_of_place_blocks(dit, text):.3g}", flush=True)
    params = list(dit.diffusion_model.parameters()) + list(text.parameters())
    print(f"{sum(p.numel() for p in params) / 1e6:.2f} M parameters", flush=True)

    def save_checkpoint(step, ema):
        if checkpoint is not None and step and step % checkpoint_every == 0:
            write(ema_state(dit, text, ema, params), checkpoint)
    seconds = train_with_ema(params, lambda: loss_on_batch(dit, text, gen, batch), steps, lr, ema_decay,
                             save_checkpoint)
    return dit, text, seconds


def file_state(dit, text) -> dict:
    state = {f"diffusion_model.{k}": v.half() for k, v in dit.diffusion_model.state_dict().items()}
    state |= {f"text.{k}": v.half() for k, v in text.state_dict().items()}
    state |= {f"decoder.{k}": v.float() for k, v in dm.DemoDecoder().state_dict().items()}
    return state


def write(state: dict, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    safetensors.torch.save_file({k: v.contiguous() for k, v in state.items()}, str(tmp),
                                metadata={"format": "pt", "native_size_px": str(demo_dit.NATIVE_SIZE_PX),
                                          "architecture": "flux", "model_sampling": "flux shift 0 (sigma = t)"})
    tmp.replace(path)


# --------------------------------------------------------------------------- evaluation

def eval_prompt(index: int) -> str:
    """The UNet demo's fixed spread of prompts over seeds (5 colours x 5 shapes x 4 backgrounds)."""
    colour = tuple(dm.COLOURS)[index % 5]
    shape = dm.SHAPES[(index // 5) % 5]
    background = tuple(dm.BACKGROUNDS)[index % 4]
    return f"{colour} {shape} on {background}"


def evaluate(path: Path, seeds: int, steps: int, cfg: float, sampler: str = "euler", scheduler: str = "simple"):
    """Object counts of native-size samples of the file as cutdiff_demo.dit loads it."""
    demo = demo_dit.load_demo_dit(path)
    comfy.utils.set_progress_bar_enabled(False)
    negative = demo.text.conditioning("")
    counts = []
    for seed in range(seeds):
        latent = comfy_runtime.empty_latent(demo_dit.NATIVE_SIZE_PX, demo_dit.NATIVE_SIZE_PX)
        samples = comfy_runtime.ksampler(demo.model, seed, steps, cfg, sampler, scheduler,
                                         demo.text.conditioning(eval_prompt(seed)), negative, latent)
        counts.append(demo_metrics.count_objects(demo.decoder(samples)[0].numpy()))
    return demo_metrics.summarise_counts(counts)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=11000)
    parser.add_argument("--batch", type=int, default=24)
    parser.add_argument("--lr", type=float, default=6e-4)
    parser.add_argument("--ema-decay", type=float, default=0.998)
    parser.add_argument("--out", type=Path, default=demo_dit.MODEL_PATH)
    parser.add_argument("--checkpoint", type=Path, default=None,
                        help="write the EMA weights here every --checkpoint-every steps while training")
    parser.add_argument("--checkpoint-every", type=int, default=1000)
    parser.add_argument("--eval-seeds", type=int, default=64)
    parser.add_argument("--eval-cfg", type=float, nargs="+", default=[3.0, 4.0, 5.0])
    parser.add_argument("--eval-only", action="store_true", help="only evaluate the file at --out")
    parser.add_argument("--time-steps", type=int, default=0, help="only time this many training steps")
    # One thread: on the 2-core machine the other core is busy; two threads stall each other.
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    if args.time_steps:
        dit, text = build_untrained(args.seed)
        print(f"rewritten blocks vs ComfyUI's: max difference {check_out_of_place_blocks(dit, text):.3g}")
        gen = torch.Generator().manual_seed(0)
        optimizer = torch.optim.AdamW(list(dit.diffusion_model.parameters()) + list(text.parameters()), lr=args.lr)
        start = time.perf_counter()
        for _ in range(args.time_steps):
            loss = loss_on_batch(dit, text, gen, args.batch)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        print(f"{(time.perf_counter() - start) / args.time_steps:.3f} s per step at batch {args.batch}")
        return
    if not args.eval_only:
        dit, text, seconds = train(args.seed, args.steps, args.batch, args.lr, args.ema_decay,
                                   args.checkpoint, args.checkpoint_every)
        write(file_state(dit, text), args.out)
        print(f"trained {args.steps} steps in {seconds / 60:.1f} min; wrote {args.out} "
              f"({args.out.stat().st_size / 2 ** 20:.2f} MiB)", flush=True)
    for cfg in args.eval_cfg:
        print(f"native size, cfg {cfg}, 20 euler/simple steps:", evaluate(args.out, args.eval_seeds, 20, cfg),
              flush=True)


if __name__ == "__main__":
    main()
