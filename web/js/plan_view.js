// Renders a CutDiffusion plan (the JSON of GET /cutdiffusion/plan) as DOM:
// two small diagrams over the target size (stage-1 patch grid, stage-2
// windows) and the numbers a user decides by. Pure DOM, no ComfyUI imports, so
// the extension module stays about wiring.

const SVG_NS = "http://www.w3.org/2000/svg";
const STAGE1_COLOR = "#4ea1ff";
const STAGE2_COLOR = "#ffa64d";

function svgElement(tag, attrs) {
  const el = document.createElementNS(SVG_NS, tag);
  for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, String(v));
  return el;
}

// A diagram of the working image (the target, padded to the patch grid) with rectangles on it.
function diagram(plan, title, color, rects, tooltip) {
  const width = plan.width + plan.grid.pad_w;
  const height = plan.height + plan.grid.pad_h;
  const box = document.createElement("div");
  box.className = "cutdiff-diagram";
  box.title = tooltip;
  const svg = svgElement("svg", {
    viewBox: `0 0 ${width} ${height}`,
    preserveAspectRatio: "xMidYMid meet",
  });
  svg.appendChild(svgElement("rect", { x: 0, y: 0, width, height, fill: "#222" }));
  for (const r of rects) {
    svg.appendChild(svgElement("rect", {
      x: r.x, y: r.y, width: r.w, height: r.h, fill: color, "fill-opacity": 0.08,
      stroke: color, "stroke-width": 1.5, "vector-effect": "non-scaling-stroke",
    }));
  }
  const label = document.createElement("div");
  label.className = "cutdiff-caption";
  label.textContent = title;
  box.append(svg, label);
  return box;
}

function patchRects(plan) {
  // Drawn as the grid cells the paper draws; each patch really is a strided
  // view of the whole image (rows i::rows, cols j::cols), which the tooltip says.
  const g = plan.grid;
  const rects = [];
  for (let i = 0; i < g.rows; i++) {
    for (let j = 0; j < g.cols; j++) {
      rects.push({ x: j * g.patch_w, y: i * g.patch_h, w: g.patch_w, h: g.patch_h });
    }
  }
  return rects;
}

function windowRects(plan) {
  return plan.windows.rects.map(([x, y, w, h]) => ({ x, y, w, h }));
}

function windowsCaption(w) {
  return w.mode === "shifted" ? `${w.rows}×${w.cols} shifted tiles` : `${w.rows}×${w.cols} windows`;
}

function line(className, text, tooltip) {
  const el = document.createElement("div");
  el.className = className;
  el.textContent = text;
  if (tooltip) el.title = tooltip;
  return el;
}

// Fills `root` with the plan; `state` = { plan, error, message, lastRun, adaptive }.
export function renderPlan(root, state) {
  root.replaceChildren();
  if (state.message) root.appendChild(line("cutdiff-note", state.message));
  if (state.error) root.appendChild(line("cutdiff-error", state.error));
  const plan = state.plan;
  if (plan) {
    const g = plan.grid;
    const w = plan.windows;
    const diagrams = document.createElement("div");
    diagrams.className = "cutdiff-diagrams";
    // Native first runs no stage 1; its patches run beside the tiles where they guide the layout.
    const targetPass = plan.layout && !plan.layout.direct;
    const wholeFrame = plan.target_pass === "whole frame";
    const stage1Caption = wholeFrame ? "no patches" : targetPass
      ? (plan.guided ? `layout guidance: ${g.rows}×${g.cols} patches` : "no stage 1")
      : `stage 1: ${plan.stage1_steps} steps, ${g.rows}×${g.cols} patches`;
    diagrams.append(
      diagram(plan, stage1Caption, STAGE1_COLOR,
        wholeFrame ? [] : patchRects(plan),
        `Stage 1 (global structure): ${g.rows * g.cols} native-size patches of ${g.patch_w}×${g.patch_h} px. ` +
        `Each patch is an interleaved view of the whole image (every ${g.rows}×${g.cols}th pixel), ` +
        "and pixels are shuffled between patches so they agree on one layout."),
      wholeFrame
        ? diagram(plan, `target pass: ${plan.steps} steps, whole frame`, STAGE2_COLOR,
          [{ x: 0, y: 0, w: plan.width, h: plan.height }],
          "target_pass whole frame: every model call sees the whole image, as a hires fix does (memory grows " +
          "with the area; target_pass tiles keeps it at one native-size batch).")
        : diagram(plan, `stage 2: ${plan.stage2_steps} steps, ${windowsCaption(w)}`, STAGE2_COLOR, windowRects(plan),
        w.mode === "shifted"
          ? `Stage 2 (detail): ${w.count} non-overlapping ${w.w}×${w.h} px tiles, the whole tiling ` +
            "moved (with wrap-around) by a random offset every step, so seams never stay in one place."
          : `Stage 2 (detail): ${w.count} overlapping windows of ${w.w}×${w.h} px, stride ${plan.stride_px} px` +
            (w.jitter_h || w.jitter_w ? `, moved by up to ${Math.max(w.jitter_h, w.jitter_w)} px every step.` : ".")),
    );
    root.appendChild(diagrams);
    if (plan.layout?.direct) {
      root.appendChild(line("cutdiff-layout",
        `sampled directly: ${plan.layout.w}×${plan.layout.h} px, ${plan.layout.steps} steps, like KSampler`,
        "layout native first with a short side at the native size: the layout pass is the image itself, " +
        "so nothing is cut into patches or windows."));
    } else if (plan.layout) {
      const pixel = plan.layout.upscale === "pixel";
      root.appendChild(line("cutdiff-layout",
        `layout first: ${plan.layout.w}×${plan.layout.h} px, ${plan.layout.steps} steps, ` +
        `${pixel ? "pixel upscale (vae)" : "latent upscale"}, then the last ${plan.steps} at full size`,
        "layout native first: the image is drawn at about the model's native size, upscaled, and only the end " +
        "of the schedule is re-run at the target size (the diagrams show that pass: target_pass). " +
        (pixel ? "The vae input decodes the layout, the image is upscaled and encoded again, as a hires fix with " +
                 "VAEDecode, ImageScale and VAEEncode."
               : "Connect the model's VAE to the vae input to upscale in pixel space instead.")));
    }
    const pad = g.pad_h || g.pad_w ? ` (padded by ${g.pad_w}×${g.pad_h} px)` : "";
    root.appendChild(wholeFrame
      ? line("cutdiff-steps", `${plan.width}×${plan.height} px · target pass: ${plan.steps} steps on the whole frame`,
        "Every model call of the target pass sees the whole image, as a hires fix of ComfyUI's core nodes does.")
      : line("cutdiff-steps",
        `${plan.width}×${plan.height} px${pad} · steps: ${plan.stage1_steps} + ${plan.stage2_steps}`,
        "Resolved stage-1 + stage-2 steps: the split is a noise level (stage_split), " +
        "so the count depends on the scheduler."));
    root.appendChild(line("cutdiff-evals",
      `${plan.evaluations_per_image} model evaluations per image` +
      (plan.evaluations_with_cfg !== plan.evaluations_per_image ? ` (${plan.evaluations_with_cfg} with CFG)` : "") +
      ` · MultiDiffusion: ${plan.multidiffusion_evaluations}`,
      "stage-1 steps × patches + stage-2 steps × windows, in native-size model calls. " +
      "MultiDiffusion would run every step on all windows."));
    // Only inputs on the node: with a dynamic combo the other layout's are not there to grey.
    const inactive = (plan.inactive ?? []).filter((name) => !state.onNode || state.onNode.includes(name));
    if (inactive.length) {
      root.appendChild(line("cutdiff-inactive", `not used by this layout: ${inactive.join(", ")}`,
        "These inputs change nothing in this run (greyed on the node); the run's report lists any you changed."));
    }
    root.appendChild(line("cutdiff-assumptions", `approx.: ${plan.assumptions.join("; ")}`,
      "The preview cannot see the model: set patch_size for models other than SDXL. " +
      "The node's report after a run gives the exact numbers."));
  }
  if (state.lastRun) root.appendChild(line("cutdiff-last-run", `last run: ${state.lastRun}`));
  if (state.adaptive) root.appendChild(line("cutdiff-adaptive", state.adaptive));
}

export const PLAN_HEIGHT_PX = 300;

export const PLAN_STYLE = `
.cutdiff-plan { font: 11px sans-serif; color: var(--input-text, #ddd); overflow: hidden; padding: 2px 4px; }
.cutdiff-diagrams { display: flex; gap: 6px; height: 140px; }
.cutdiff-diagram { flex: 1; display: flex; flex-direction: column; min-width: 0; }
.cutdiff-diagram svg { flex: 1; min-height: 0; width: 100%; }
.cutdiff-caption { text-align: center; white-space: nowrap; overflow: hidden; text-overflow: ellipsis; }
.cutdiff-steps, .cutdiff-evals, .cutdiff-last-run, .cutdiff-adaptive { margin-top: 2px; }
.cutdiff-assumptions, .cutdiff-note, .cutdiff-inactive { opacity: 0.6; margin-top: 2px; }
.cutdiff-error { color: #ff7070; }
.cutdiff-last-run { color: #8fd18f; }
.cutdiff-adaptive-report { font: 11px sans-serif; color: var(--input-text, #ddd); opacity: 0.6; padding: 2px 4px;
  white-space: nowrap; overflow: hidden; text-overflow: ellipsis; }
.cutdiff-adaptive-report.cutdiff-reported { color: #8fd18f; opacity: 1; }
/* Nodes 2.0 (Vue nodes, root class lg-node) stretches a DOM widget to fill spare node height:
   keep the previews at their own height there (the classic canvas sizes them itself). */
.lg-node .cutdiff-plan { flex: 0 0 auto; height: ${PLAN_HEIGHT_PX}px; }
.lg-node .cutdiff-adaptive-report { flex: 0 0 auto; }
`;
