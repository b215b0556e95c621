// CutDiffusion plan preview on the CutDiffusion KSampler node.
//
// The geometry is not computed here: the extension asks the pack's server
// route (nodes/plan_route.py), which runs the same Python plan code a sampling
// run uses. After a run the node's own report (ui output "cutdiffusion") and
// AdaptiveDiffusion's websocket event replace guesses with what happened.
//
// Everything the extension shows is a DOM widget (node.addDOMWidget), never
// drawn on the canvas, so it shows both on the classic LiteGraph canvas and
// with Nodes 2.0 (Vue-rendered nodes, setting Comfy.VueNodes.Enabled), where
// the canvas draws no node bodies and onDrawForeground may never run.

import { app } from "../../../scripts/app.js";
import { api } from "../../../scripts/api.js";
import { PLAN_HEIGHT_PX, PLAN_STYLE, renderPlan } from "./plan_view.js";

const SAMPLER_NODE = "CutDiffusionKSampler";
const ADAPTIVE_NODE = "AdaptiveDiffusion";
const ADAPTIVE_EVENT = "cutdiffusion.adaptive";
const PLAN_ROUTE = "/cutdiffusion/plan";
const WIDGET_NAME = "cutdiffusion_plan";
const ADAPTIVE_WIDGET_NAME = "cutdiffusion_adaptive_report";
// The canvas gives a DOM widget its height less twice its margin (default 10 px).
const ADAPTIVE_HEIGHT = 24;
const ADAPTIVE_MARGIN = 4;
// Upstream width/height edits (on the Empty Latent Image) call nothing on this
// node: the (cheap, local) query is re-checked on this timer, on either renderer.
const POLL_MS = 400;
// Widgets of the node that change the plan (all others, e.g. seed, do not).
const PLAN_WIDGETS = ["steps", "cfg", "sampler_name", "scheduler", "denoise", "patch_size", "window_stride",
  "stage_split", "window_jitter", "stage2_mode", "min_stage1_steps", "global_guidance", "layout", "layout_denoise",
  "layout_guidance", "target_pass"];
// What loading a workflow saved by an earlier pack version needs, from the server (nodes/plan_route.py
// saved_workflow_settings): {when_absent, order_saved_before_layout_first, layouts, order, defaults,
// shown_by_layout}.
const SETTINGS_ROUTE = "/cutdiffusion/settings";
let savedSettings = null;
const LAYOUT_NODES = [SAMPLER_NODE, "CutDiffusion"];
// Where ComfyUI has V3's DynamicCombo (0.33.0), `layout` is one: the frontend shows under each layout
// only its own settings, as widgets named "layout.<setting>", and prompts name them so.
const DYNAMIC_COMBO = "COMFY_DYNAMICCOMBO_V3";
const NESTED = "layout.";
// How far upstream of latent_image to look for a node with width/height widgets
// (EmptyLatentImage: 1 hop; VAEEncode <- ImageScale: 2 hops).
const MAX_HOPS = 4;

async function loadSavedSettings() {
  try {
    const response = await api.fetchApi(SETTINGS_ROUTE);
    if (response.ok) return await response.json();
    console.warn(`CutDiffusion: ${SETTINGS_ROUTE} answered ${response.status}; workflows saved by earlier versions load by position`);
  } catch (e) {
    console.warn(`CutDiffusion: ${SETTINGS_ROUTE} unavailable (${e}); workflows saved by earlier versions load by position`);
  }
  return null;
}

function settingName(widgetName) {
  return widgetName.startsWith(NESTED) ? widgetName.slice(NESTED.length) : widgetName;
}

// A widget by its input's name, at the top level or shown under `layout` (looked up afresh: the
// frontend rebuilds a dynamic combo's widgets whenever its value is set).
function settingWidget(node, name) {
  return node.widgets?.find((w) => w.name === name) ?? node.widgets?.find((w) => w.name === NESTED + name);
}

// Widget values are saved by position. A node saved with every setting its own input (before the
// dynamic combo; or with the earlier order, `layout` and its inputs last) got its values by position:
// give each widget its own saved value by name, and inputs the save predates what that workflow ran.
// The saved forms are told apart by the value where `layout` now is (a layout option, or patch_size in
// the earlier order) and, with the dynamic combo, by how many values follow it.
function restoreSavedSettings(node, values, settings, dynamic) {
  if (!settings || !Array.isArray(values)) return;
  const names = node.widgets?.map((w) => w.name) ?? [];
  const layoutAt = names.indexOf("layout");
  if (layoutAt < 0) return;
  const savedLayout = values[layoutAt];
  const layoutFirst = settings.layouts.includes(savedLayout);
  if (layoutFirst && (!dynamic || values.length - layoutAt - 1 === settings.shown_by_layout[savedLayout].length)) {
    return;   // saved in this frontend's own form: loaded right by position
  }
  // The widgets before `layout` (a sampler's seed ... denoise) come first in every form.
  const order = layoutFirst ? settings.order : settings.order_saved_before_layout_first;
  const savedNames = [...names.slice(0, layoutAt), ...order];
  const saved = new Map(savedNames.slice(0, values.length).map((name, i) => [name, values[i]]));
  const valueOf = (name) => saved.has(name) ? saved.get(name)
    : name in settings.when_absent ? settings.when_absent[name] : settings.defaults[name];
  // Setting the layout first: with the dynamic combo that makes its widgets (they follow it).
  node.widgets[layoutAt].value = valueOf("layout");
  for (const widget of node.widgets.slice(layoutAt + 1)) {
    const name = settingName(widget.name);
    if (name in settings.defaults) widget.value = valueOf(name);
  }
  if (dynamic) {
    const dropped = order.filter((name) => saved.has(name) && !settingWidget(node, name) &&
                                           saved.get(name) !== settings.defaults[name]);
    if (dropped.length) {
      console.info(`CutDiffusion: node ${node.id} was saved with ${dropped.map((n) => `${n} = ${saved.get(n)}`).join(", ")}, ` +
                   `which layout "${valueOf("layout")}" does not use; they are not kept`);
    }
  }
}

function widgetValue(node, name) {
  return settingWidget(node, name)?.value;
}

// The target size in px from the first upstream node with width and height
// widgets (EmptyLatentImage, EmptySD3LatentImage, LatentUpscale, ImageScale, ...).
function upstreamLatentSize(node) {
  let current = node;
  let slotName = "latent_image";
  for (let hop = 0; hop < MAX_HOPS; hop++) {
    const slot = current.findInputSlot?.(slotName) ?? -1;
    const source = slot >= 0 ? current.getInputNode(slot) : null;
    if (!source) return null;
    const width = widgetValue(source, "width");
    const height = widgetValue(source, "height");
    if (width > 0 && height > 0) {
      return { width, height };
    }
    // Follow the image/latent the source is made from (VAEEncode.pixels, LatentUpscaleBy.samples, ...).
    const next = source.inputs?.find((i, index) => ["IMAGE", "LATENT"].includes(i.type) &&
      source.isInputConnected(index));
    if (!next) return null;
    current = source;
    slotName = next.name;
  }
  return null;
}

// The node class the MODEL comes from, through model patches (CutDiffusion,
// AdaptiveDiffusion, LoRA loaders, ...): the server knows some models' native size.
function modelSource(node) {
  let current = node;
  for (let hop = 0; hop < MAX_HOPS; hop++) {
    const slot = current.inputs?.findIndex((i) => i.type === "MODEL") ?? -1;
    const source = slot >= 0 ? current.getInputNode(slot) : null;
    if (!source) return current === node ? null : current.comfyClass;
    current = source;
  }
  return current.comfyClass;
}

function planQuery(node, size) {
  const params = { ...size };
  const source = modelSource(node);
  if (source) params.model_source = source;
  for (const name of PLAN_WIDGETS) {
    const value = widgetValue(node, name);
    if (value !== undefined) params[name] = value;
  }
  const vae = node.findInputSlot?.("vae") ?? -1;
  if (vae >= 0 && node.isInputConnected(vae)) params.upscale = "pixel";   // the layout's upscale goes through it
  return new URLSearchParams(params).toString();
}

// Grey the inputs the chosen layout does not use (the server says which: config.inactive_settings).
function markInactive(node, plan) {
  if (!plan?.settings) return;
  for (const w of node.widgets ?? []) {
    const name = settingName(w.name);
    if (plan.settings.includes(name)) w.disabled = plan.inactive.includes(name);
  }
}

function render(node) {
  node.cutdiffusion.onNode = (node.widgets ?? []).map((w) => settingName(w.name));
  markInactive(node, node.cutdiffusion.plan);
  renderPlan(node.cutdiffusion.element, node.cutdiffusion);
  node.setDirtyCanvas?.(true, false);
}

// Fetch the plan when the settings changed since the last request; answers to
// older requests are dropped so fast widget drags never show a stale plan.
async function refresh(node) {
  const state = node.cutdiffusion;
  const size = upstreamLatentSize(node);
  const query = size ? planQuery(node, size) : "";
  if (query === state.query) return;
  state.query = query;
  if (!size) {
    Object.assign(state, {
      plan: null, error: null, shownQuery: query,
      message: "Connect an Empty Latent Image (or a node with width/height) to latent_image to see the plan.",
    });
    render(node);
    return;
  }
  try {
    const response = await api.fetchApi(`${PLAN_ROUTE}?${query}`);
    const body = await response.json();
    if (state.query !== query) return;
    Object.assign(state, response.ok
      ? { plan: body, error: null, message: null, shownQuery: query }
      : { plan: null, error: body.error ?? response.statusText, message: null, shownQuery: query });
  } catch (e) {
    if (state.query !== query) return;
    Object.assign(state, { plan: null, error: `plan preview unavailable: ${e}`, message: null, shownQuery: query });
  }
  render(node);
}

// The CutDiffusion KSampler nodes with a plan widget, for the timer.
const samplers = new Set();

function pollSamplers() {
  const vueNodesOn = !!window.LiteGraph?.vueNodesMode;
  for (const node of samplers) {
    if (node.graph?.getNodeById(node.id) !== node) {
      samplers.delete(node);   // removed, or its workflow closed (undo and reload make new nodes)
      continue;
    }
    if (!vueNodesOn) node.cutdiffusion.fitChecks = 0;
    else if (node.cutdiffusion.fitChecks < MAX_FIT_CHECKS) fitOnceDrawn(node);
    refresh(node);
  }
}

function addPlanWidget(node) {
  const element = document.createElement("div");
  element.className = "cutdiff-plan";
  const widget = node.addDOMWidget(WIDGET_NAME, "cutdiffusion_plan", element, {
    serialize: false, // display only: never part of the workflow or the prompt
    hideOnZoom: false,
    hideInPanel: true, // the side panel (frontend 1.49+) lists inputs; a preview there is an empty row
    getMinHeight: () => PLAN_HEIGHT_PX,
    getMaxHeight: () => PLAN_HEIGHT_PX,
  });
  widget.serialize = false;
  // query: the settings last asked for; shownQuery: the settings of what is shown.
  node.cutdiffusion = { element, widget, query: null, shownQuery: null, plan: null, error: null, message: null,
    lastRun: null, adaptive: null, fitChecks: 0 };

  for (const w of node.widgets ?? []) {
    if (!PLAN_WIDGETS.includes(settingName(w.name))) continue;   // the poll covers widgets a combo makes later
    const callback = w.callback;
    w.callback = function (...args) {
      const result = callback?.apply(this, args);
      refresh(node);
      return result;
    };
  }
  const onConnectionsChange = node.onConnectionsChange;
  node.onConnectionsChange = function (...args) {
    const result = onConnectionsChange?.apply(this, args);
    refresh(node);
    return result;
  };
  // On the classic canvas a redraw follows every edit: re-check at once there
  // (Nodes 2.0 draws no node bodies on the canvas; the timer covers it).
  const onDrawForeground = node.onDrawForeground;
  node.onDrawForeground = function (...args) {
    const result = onDrawForeground?.apply(this, args);
    refresh(node);
    return result;
  };
  samplers.add(node);
  const onRemoved = node.onRemoved;
  node.onRemoved = function (...args) {
    samplers.delete(node);
    return onRemoved?.apply(this, args);
  };
  const onExecuted = node.onExecuted;
  node.onExecuted = function (output) {
    const result = onExecuted?.apply(this, arguments);
    const report = output?.cutdiffusion?.[0];
    if (report) {
      node.cutdiffusion.lastRun = report.replace(/^CutDiffusion: /, "");
      render(node);
    }
    return result;
  };
  const [width, height] = node.size;
  node.setSize([Math.max(width, 380), Math.max(height, node.computeSize()[1])]);
}

// A one-line report under the AdaptiveDiffusion node's widgets after a run.
function addAdaptiveWidget(node) {
  const element = document.createElement("div");
  element.className = "cutdiff-adaptive-report";
  element.textContent = "evaluations made / skipped: after a run";
  const widget = node.addDOMWidget(ADAPTIVE_WIDGET_NAME, "cutdiffusion_adaptive_report", element, {
    serialize: false,
    hideOnZoom: false,
    hideInPanel: true,
    margin: ADAPTIVE_MARGIN,
    getMinHeight: () => ADAPTIVE_HEIGHT,
    getMaxHeight: () => ADAPTIVE_HEIGHT,
  });
  widget.serialize = false;
  node.cutdiffusionAdaptiveElement = element;
}

// Empty node under the preview (Nodes 2.0, canvas px) above which it is fitted: its own footer (the
// pack's badge and "Show advanced inputs") takes 60 px.
const MAX_SLACK_PX = 100;
// Polls after Nodes 2.0 draws a node in which it is fitted; later resizes are the user's.
const MAX_FIT_CHECKS = 10;

// Switching Nodes 2.0 on with a workflow open loads nothing, and the Vue node measures its first
// (saved, too large) height a moment after it is drawn: fit it until that settles.
function fitOnceDrawn(node) {
  const state = node.cutdiffusion;
  const vueNode = state.element.closest(".lg-node");
  if (!vueNode) return;
  state.fitChecks++;
  const slack = (vueNode.getBoundingClientRect().bottom - state.element.getBoundingClientRect().bottom) /
    (app.canvas?.ds?.scale || 1);
  if (slack > MAX_SLACK_PX) fitNodesTwoPointZero(node);
}

// Nodes 2.0 takes a node's saved height as its minimum and gives what its widgets leave over to the
// preview: a workflow saved on the classic canvas (every input shown: 900 px) would leave hundreds of
// px empty. A Vue node never gets shorter than its content, so a smaller height fits it to what it
// shows (advanced inputs folded or not); the classic canvas grows a node back to its widgets.
function fitNodesTwoPointZero(node) {
  if (!window.LiteGraph?.vueNodesMode) return;
  node.setSize([node.size[0], PLAN_HEIGHT_PX]);
}

// Node ids are numbers in older frontends and strings on the canvas since
// frontend 1.49 (graph.serialize() still gives numbers): look up both.
function findNode(nodeId) {
  const graph = app.graph;
  if (!graph || nodeId == null) return null;
  return graph.getNodeById(nodeId) ?? graph.getNodeById(String(nodeId)) ?? graph.getNodeById(Number(nodeId)) ?? null;
}

// AdaptiveDiffusion reports {node, evaluated, skipped} per run: show it on its
// own node and on every CutDiffusion KSampler its MODEL output feeds.
function onAdaptiveEvent(event) {
  const { node: nodeId, evaluated, skipped } = event.detail ?? {};
  const source = findNode(nodeId);
  if (!source) return;
  const text = `AdaptiveDiffusion: ${evaluated} evaluations made, ${skipped} skipped`;
  source.cutdiffusionAdaptive = text;
  if (source.cutdiffusionAdaptiveElement) {
    source.cutdiffusionAdaptiveElement.textContent = text;
    source.cutdiffusionAdaptiveElement.classList.add("cutdiff-reported");
  }
  source.setDirtyCanvas?.(true, false);
  for (const target of downstreamSamplers(source)) {
    target.cutdiffusion.adaptive = text;
    render(target);
  }
}

function downstreamSamplers(source) {
  const found = [];
  const seen = new Set();
  const queue = [source];
  while (queue.length) {
    const node = queue.shift();
    for (const [slot, output] of (node.outputs ?? []).entries()) {
      if (output.type !== "MODEL") continue;
      for (const target of node.getOutputNodes(slot) ?? []) {
        if (!target || seen.has(target.id)) continue;
        seen.add(target.id);
        if (target.comfyClass === SAMPLER_NODE && target.cutdiffusion) found.push(target);
        queue.push(target);
      }
    }
  }
  return found;
}

app.registerExtension({
  name: "CutDiffusion.PlanPreview",
  async setup() {
    const style = document.createElement("style");
    style.textContent = PLAN_STYLE;
    document.head.appendChild(style);
    api.addEventListener(ADAPTIVE_EVENT, onAdaptiveEvent);
    setInterval(pollSamplers, POLL_MS);
  },
  // After ComfyUI has grown each loaded node to its classic widget size.
  loadedGraphNode(node) {
    if (node.comfyClass === SAMPLER_NODE) fitNodesTwoPointZero(node);
  },
  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (LAYOUT_NODES.includes(nodeData.name)) {
      // Awaited here: node definitions are registered before any workflow is loaded.
      savedSettings ??= await loadSavedSettings();
      const layoutSpec = nodeData.input?.optional?.layout ?? nodeData.input?.required?.layout;
      const dynamic = layoutSpec?.[0] === DYNAMIC_COMBO;
      const onConfigure = nodeType.prototype.onConfigure;
      nodeType.prototype.onConfigure = function (info, ...args) {
        const result = onConfigure?.apply(this, [info, ...args]);
        restoreSavedSettings(this, info?.widgets_values, savedSettings, dynamic);
        return result;
      };
    }
    if (nodeData.name === SAMPLER_NODE) {
      const onNodeCreated = nodeType.prototype.onNodeCreated;
      nodeType.prototype.onNodeCreated = function (...args) {
        const result = onNodeCreated?.apply(this, args);
        addPlanWidget(this);
        return result;
      };
    } else if (nodeData.name === ADAPTIVE_NODE) {
      const onNodeCreated = nodeType.prototype.onNodeCreated;
      nodeType.prototype.onNodeCreated = function (...args) {
        const result = onNodeCreated?.apply(this, args);
        addAdaptiveWidget(this);
        return result;
      };
    }
  },
});
