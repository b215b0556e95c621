"""What every benchmark prints about itself: the machine, and its own section of BENCHMARKS.md."""
from __future__ import annotations

import datetime
import os
import re
from pathlib import Path

import torch

BENCHMARKS = Path(__file__).resolve().parents[1] / "BENCHMARKS.md"


def machine_description() -> str:
    """CPU (and GPU) model, cores, load, torch and ComfyUI versions, date: what a figure depends on."""
    cpu = "unknown CPU"
    with open("/proc/cpuinfo") as f:
        match = re.search(r"^model name\s*:\s*(.+)$", f.read(), re.M)
        if match:
            cpu = match.group(1).strip()
    parts = [f"{cpu}, {len(os.sched_getaffinity(0))} cores, torch threads {torch.get_num_threads()}, "
             f"1-min load average {os.getloadavg()[0]:.1f}"]
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        parts.append(f"GPU {torch.cuda.get_device_name(0)} ({props.total_memory / 2 ** 30:.0f} GiB)")
    try:
        import comfyui_version
        comfy = comfyui_version.__version__
    except ImportError:
        comfy = "unknown"
    parts.append(f"torch {torch.__version__}, ComfyUI {comfy}, {datetime.datetime.now().astimezone():%Y-%m-%d %H:%M %Z}")
    return "; ".join(parts)


def write_section(heading: str, body: str, path: Path = BENCHMARKS) -> None:
    """Replace (or append) only the section under `heading` (a '## ...' line); others belong to other benchmarks."""
    text = path.read_text() if path.exists() else "# Benchmarks\n\nEvery figure names the machine that produced it.\n"
    section = f"{heading}\n\n{body.rstrip()}\n"
    pattern = re.compile(rf"^{re.escape(heading)}\n.*?(?=^## |\Z)", re.M | re.S)
    if pattern.search(text):
        text = pattern.sub(lambda _: section + "\n", text, count=1).rstrip() + "\n"
    else:
        text = text.rstrip() + "\n\n" + section
    path.write_text(text)
