"""Train the detail metrics' feature network and write models/cutdiffusion_detail_features.safetensors.

    .venv/bin/python scripts/train_detail_features.py            # seed 0: the shipped file

Recorded run, the one that wrote the shipped file (seed 0, all defaults: a pool of 2048 scenes and
512 held out, 1500 steps of 32 images + 32 crops, lr 3e-3 with 2% warm-up and cosine decay, EMA
0.99, 1 torch thread): AMD EPYC, 2 cores (the other one running another training job), torch
2.14.1, 2026-12-02. Rendering took 47 s, training 1.8 min (2.6 min in all). Held-out accuracy,
whole images: colour 100.0%, shape 76.7%, background 100.0%, period 89.0%; 64 px crops: colour
99.8%, shape 68.5%, background 99.4%, period 82.3% (always naming the commonest class would score
20% for shape and 40% for period). A rerun wrote the same file, 62252 bytes, sha256
8c4fe9e31637eeaa14693a7d4d47681e80a6df346755023c753a76bf02dd6685.

Data: the detail proxy's training scenes (cutdiff_demo.detail.render_batch, decoded by its
DetailDecoder), a fixed pool rendered once from the seed, with held-out scenes rendered after
it. Every step takes a batch of whole 128 px images and a batch of random 64 px crops of other
pool images (FID_crop's crop size), each randomly flipped and turned by quarter turns (no label
depends on orientation). The heads name the prompt's colour, shape and background and the class
of the stripes' period (detail.STRIPE_PERIOD_LATENT: 5.3, 6.7 or 8 px), so the features must
see pixel-scale detail; colour, shape and period count only where the image or crop holds at
least MIN_OBJECT_PX object pixels (a canvas crop may cut the object away). Optimisation: AdamW
with warm-up, cosine decay and an EMA of the weights (scripts/demo_training.py).
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from cutdiff_dev import comfy_runtime  # noqa: E402  (the in-process ComfyUI harness; must start before comfy imports)

comfy_runtime.bootstrap()
import safetensors.torch  # noqa: E402

from cutdiff_demo import detail  # noqa: E402
from cutdiff_demo import detail_metrics as dx  # noqa: E402
from cutdiff_demo import model as dm  # noqa: E402
from demo_training import train_with_ema  # noqa: E402  (scripts/demo_training.py)

CROP_PX = 64
MIN_OBJECT_PX = 200
RENDER_CHUNK = 64
PERIODS = sorted(set(detail.STRIPE_PERIOD_LATENT.values()))


def labels(token_ids: torch.Tensor) -> dict[str, torch.Tensor]:
    """Class ids per head from render_batch's token ids (vocabulary rows: "", colours, shapes, backgrounds)."""
    colour = token_ids[:, 0] - 1
    shape = token_ids[:, 1] - 1 - len(dm.COLOURS)
    background = token_ids[:, 2] - 1 - len(dm.COLOURS) - len(dm.SHAPES)
    period = torch.tensor([PERIODS.index(detail.STRIPE_PERIOD_LATENT[name]) for name in dm.SHAPES])[shape]
    return {"colour": colour, "shape": shape, "background": background, "period": period}


def render_pool(gen: torch.Generator, count: int):
    """Images [N, 128, 128, 3], their labels and object masks [N, 128, 128] (of detail_metrics)."""
    decoder = detail.DetailDecoder()
    images, token_ids = [], []
    with torch.no_grad():
        for start in range(0, count, RENDER_CHUNK):
            latent, tokens, _ = detail.render_batch(gen, min(RENDER_CHUNK, count - start))
            images.append(decoder(latent))
            token_ids.append(tokens)
    images = torch.cat(images)
    return images, labels(torch.cat(token_ids)), torch.stack([object_pixels(image.numpy()) for image in images])


def object_pixels(image: np.ndarray) -> torch.Tensor:
    masks = dx.object_masks(image)
    return torch.from_numpy(np.any(masks, axis=0) if masks else np.zeros(image.shape[:2], dtype=bool))


def sample(gen, pool, batch: int, crop: int | None):
    """A random batch of whole images or crops, randomly flipped and turned; labels; object-visible flags."""
    images, pool_labels, objects = pool
    index = torch.randint(len(images), (batch,), generator=gen)
    x, seen = images[index], objects[index]
    if crop is not None:
        corners = torch.randint(images.shape[1] - crop + 1, (batch, 2), generator=gen).tolist()
        x = torch.stack([image[t:t + crop, l:l + crop] for image, (t, l) in zip(x, corners)])
        seen = torch.stack([mask[t:t + crop, l:l + crop] for mask, (t, l) in zip(seen, corners)])
    turns = int(torch.randint(4, (), generator=gen))
    x = torch.rot90(x, turns, dims=(1, 2))
    if torch.rand((), generator=gen) < 0.5:
        x = x.flip(2)
    return x, {name: value[index] for name, value in pool_labels.items()}, seen.flatten(1).sum(1) >= MIN_OBJECT_PX


def loss_on(net, x, target, visible):
    logits = net.logits(net(x))
    loss = F.cross_entropy(logits["background"], target["background"])
    for name in ("colour", "shape", "period"):  # only where the object is in view
        per_sample = F.cross_entropy(logits[name], target[name], reduction="none")
        loss = loss + (per_sample * visible).sum() / visible.sum().clamp(min=1)
    return loss


@torch.no_grad()
def standardise(net, gen, pool, batch: int, batches: int = 32) -> None:
    """Set the features' BatchNorm to the mean and variance of the final (averaged) weights' raw
    features over pool images and crops; training left it tracking the raw weights of its last steps."""
    net.norm.reset_running_stats()
    net.norm.momentum = None   # a plain average over the batches
    net.train()
    for index in range(batches):
        net(sample(gen, pool, batch, None if index % 2 else CROP_PX)[0])
    net.eval()


@torch.no_grad()
def accuracies(net, pool, crop: int | None, gen, repeats: int = 1) -> dict[str, float]:
    """Held-out accuracy per head (colour, shape, period over images or crops with the object in view)."""
    correct, counted = {name: 0 for name in dx.HEADS}, {name: 0 for name in dx.HEADS}
    for _ in range(repeats):
        for start in range(0, len(pool[0]), RENDER_CHUNK):
            part = (pool[0][start:start + RENDER_CHUNK], {k: v[start:start + RENDER_CHUNK] for k, v in pool[1].items()},
                    pool[2][start:start + RENDER_CHUNK])
            x, target, visible = sample(gen, part, len(part[0]), crop)
            logits = net.logits(net(x))
            for name in dx.HEADS:
                keep = torch.ones_like(visible) if name == "background" else visible
                correct[name] += int((logits[name].argmax(1) == target[name])[keep].sum())
                counted[name] += int(keep.sum())
    return {name: correct[name] / max(counted[name], 1) for name in dx.HEADS}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--pool", type=int, default=2048, help="training scenes")
    parser.add_argument("--held-out", type=int, default=512)
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--batch", type=int, default=32, help="whole images, and as many crops, per step")
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--ema-decay", type=float, default=0.99)
    parser.add_argument("--out", type=Path, default=dx.FEATURES_PATH)
    parser.add_argument("--threads", type=int, default=1, help="1: the machine is shared (see train_demo_model.py)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.use_deterministic_algorithms(True)
    torch.manual_seed(args.seed)
    gen = torch.Generator().manual_seed(args.seed)

    start = time.perf_counter()
    pool, held_out = render_pool(gen, args.pool), render_pool(gen, args.held_out)
    print(f"rendered {args.pool} + {args.held_out} scenes in {time.perf_counter() - start:.0f} s", flush=True)
    net = dx.FeatureNet()

    def loss_on_batch():
        whole = loss_on(net, *sample(gen, pool, args.batch, None))
        return whole + loss_on(net, *sample(gen, pool, args.batch, CROP_PX))

    seconds = train_with_ema(list(net.parameters()), loss_on_batch, args.steps, args.lr, args.ema_decay)
    standardise(net, gen, pool, args.batch)
    check = torch.Generator().manual_seed(args.seed + 1)
    for what, crop, repeats in (("whole images", None, 1), (f"{CROP_PX} px crops", CROP_PX, 4)):
        scores = accuracies(net, held_out, crop, check, repeats)
        print(f"held-out accuracy, {what}: " + ", ".join(f"{name} {value:.1%}" for name, value in scores.items()))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    safetensors.torch.save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(args.out),
                                metadata={"format": "pt", "crop_px": str(CROP_PX)})
    print(f"trained {args.steps} steps in {seconds / 60:.1f} min ({(time.perf_counter() - start) / 60:.1f} min "
          f"in all); wrote {args.out} ({args.out.stat().st_size / 2 ** 10:.0f} KiB)")


if __name__ == "__main__":
    main()
