"""The pack in the official ComfyUI frontend, driven like a user in headless Chromium.

A real server (cutdiff_dev/comfy_server.py) with the pack copied into custom_nodes/, Debian's
Chromium through its chromedriver (Selenium; no browser download). Checks that the plan
preview on CutDiffusion KSampler shows the right numbers for two settings, that it is a DOM
widget shown with the classic LiteGraph canvas and with Nodes 2.0 (Vue-rendered nodes), that
expert inputs are hidden where the frontend hides advanced inputs, and that the demo workflow
runs from the Run button; saves screenshots (the folder is printed).

Works with 0.3.75's frontend (1.32) and newer ones (0.33.0's 1.49: node ids on the canvas are
strings there, graph.serialize() gives numbers, so ids are compared as strings).
"""
import os
import re
import shutil
import tempfile
import time

import pytest

from cutdiff_dev import comfy_runtime as rt
from cutdiff_dev import comfy_server
from cutdiff_dev import ui_workflow as uw
from comfyui_cutdiffusion.nodes.plan_route import preview_plan

CHROMIUM = "/usr/lib/chromium/chromium"   # the binary itself: /usr/bin/chromium is a wrapper script
CHROMEDRIVER = "/usr/bin/chromedriver"
SHOTS = rt.REPO_ROOT / "out" / "browser"
PACK = comfy_server.PACK_DIR_NAME
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--window-size=1600,1000"]
# A first visit shows a template browser, a missing-model dialog (no SDXL checkpoint here), the
# minimap and a "Nodes 2.0" banner over the canvas. Tests start on the classic canvas;
# test_plan_preview_in_both_renderers switches Nodes 2.0 on and back off.
VUE_SETTING = "Comfy.VueNodes.Enabled"
SETTINGS = {"Comfy.TutorialCompleted": True, "Comfy.Workflow.ShowMissingModelsWarning": False,
            "Comfy.Minimap.Visible": False, "Comfy.VueNodes.Enabled": False}
PAGE_TIMEOUT_S = 60
RUN_TIMEOUT_S = 240
VUE_TIMEOUT_S = 15
# Expert inputs marked advanced=True (nodes/cutdiffusion.py, nodes/adaptive.py) where ComfyUI's V3
# inputs take it; the CutDiffusion KSampler then shows these widgets by default.
SAMPLER_BASIC_WIDGETS = ["seed", "steps", "cfg", "sampler_name", "scheduler", "denoise", "layout", "target_pass",
                         "layout_denoise"]
# Where ComfyUI has V3's DynamicCombo (0.33.0), `layout` is one: the frontend shows only the chosen
# layout's settings, as widgets named "layout.<setting>". Tests name settings without the prefix.
STRIP_JS = "(name => name.replace(/^layout\\./, ''))"


def _layout_is_dynamic() -> bool:
    rt.init_nodes()
    from comfy_api.latest import io
    return hasattr(io, "DynamicCombo")


def _shown_settings(layout: str) -> set[str]:
    """The settings a node shows with `layout` chosen: all of them without a dynamic combo."""
    from comfyui_cutdiffusion.cutdiff_core.config import SETTINGS, settings_of_layout
    chosen = settings_of_layout(layout) if _layout_is_dynamic() else SETTINGS
    return {"layout"} | {s.name for s in chosen}


@pytest.fixture(scope="module")
def page():
    missing = [path for path in (CHROMIUM, CHROMEDRIVER) if not os.access(path, os.X_OK)]
    if missing:
        pytest.skip(f"headless Chromium is not installed ({', '.join(missing)}); "
                    f"scripts/setup_env.sh installs Debian's chromium + chromium-driver when run as root")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    server = comfy_server.shared()
    server.post_json("/api/settings", SETTINGS)
    profile = tempfile.mkdtemp(prefix="cutdiff_chromium_")   # a fresh profile: no state between runs
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in CHROMIUM_FLAGS + [f"--user-data-dir={profile}"]:
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        driver.set_script_timeout(PAGE_TIMEOUT_S)
        driver.get(server.url)
        driver.execute_script("localStorage.setItem('vueNodesBannerDismissed', 'true')")
        driver.refresh()
        _wait(driver, "window.app && app.graph && app.extensionManager && "
                      "app.extensions.some(e => e.name === 'CutDiffusion.PlanPreview')", PAGE_TIMEOUT_S,
              "the frontend with the pack's extension")
        SHOTS.mkdir(parents=True, exist_ok=True)
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def _wait(driver, condition: str, timeout: float, what: str):
    """Poll a JS expression until it is truthy; bounded."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = driver.execute_script(f"return ({condition})")
        if value:
            return value
        time.sleep(0.25)
    raise AssertionError(f"timed out after {timeout} s waiting for {what} ({condition})")


def _load_template(driver, name: str) -> None:
    """Open one of the pack's workflows from the template route, as the template browser does."""
    error = driver.execute_async_script("""
        const [url, name, done] = arguments;
        fetch(url).then(r => r.json()).then(wf => app.loadGraphData(wf, true, true, name))
          .then(() => done(null), e => done(String(e)));""",
        f"/api/workflow_templates/{PACK}/{name}.json", name)
    assert error is None, error


SAMPLER_JS = "app.graph.nodes.find(n => n.comfyClass === 'CutDiffusionKSampler')"


def _show_sampler(driver) -> None:
    """Zoom to 100% with the sampler node in view, for readable screenshots."""
    driver.execute_script(f"""
        const node = {SAMPLER_JS};
        app.canvas.ds.scale = 1;
        app.canvas.ds.offset = [420 - node.pos[0], 90 - node.pos[1]];
        app.canvas.setDirty(true, true);""")
    time.sleep(0.5)  # one animation frame for the DOM widget to follow the canvas


def _bring_plan_into_view(driver) -> None:
    """Scroll the canvas so the preview (under all the sampler's widgets) is on screen."""
    driver.execute_script(f"""
        const node = {SAMPLER_JS};
        const box = node.cutdiffusion.element.getBoundingClientRect();
        const [x, y] = app.canvas.ds.offset;
        app.canvas.ds.offset = [x, y - (box.top - 300) / app.canvas.ds.scale];
        app.canvas.setDirty(true, true);""")
    time.sleep(0.5)


def _shown_plan(driver, expected_query_part: str) -> dict:
    """The plan the node shows once its query contains `expected_query_part`: the data it drew
    and the text and rectangles a user sees."""
    _wait(driver, f"{SAMPLER_JS}.cutdiffusion.plan && {SAMPLER_JS}.cutdiffusion.shownQuery.includes("
                  f"{expected_query_part!r})", PAGE_TIMEOUT_S, f"a plan for {expected_query_part}")
    time.sleep(0.5)  # a frame for the renderer to place the widget
    return driver.execute_script(f"""
        const node = {SAMPLER_JS};
        const state = node.cutdiffusion;
        const text = cls => state.element.querySelector(cls)?.textContent;
        const svgs = state.element.querySelectorAll('svg');
        const box = state.element.getBoundingClientRect();
        // What a user sees at the middle of the preview: the preview itself, nothing over it.
        const hit = document.elementFromPoint(box.x + box.width / 2, box.y + box.height / 2);
        const vueNode = document.querySelector(`.lg-node[data-node-id="${{node.id}}"]`);
        return {{plan: state.plan, steps: text('.cutdiff-steps'), evals: text('.cutdiff-evals'),
                 captions: Array.from(state.element.querySelectorAll('.cutdiff-caption')).map(c => c.textContent),
                 stage1_rects: svgs[0].querySelectorAll('rect').length - 1,
                 stage2_rects: svgs[1].querySelectorAll('rect').length - 1,
                 dom_widget: node.widgets.some(w => w.name === 'cutdiffusion_plan' && w.element === state.element),
                 visible: state.element.isConnected && box.height > 100 && box.width > 100
                          && state.element.contains(hit),
                 in_vue_node: !!vueNode && vueNode.contains(state.element),
                 height: box.height / app.canvas.ds.scale,
                 // What Nodes 2.0 draws of the node below the preview (its border and padding).
                 below: vueNode ? (vueNode.getBoundingClientRect().bottom - box.bottom) / app.canvas.ds.scale : null}};""")


def _set_widget(driver, node_js: str, name: str, value) -> None:
    """Change a widget as the UI does: its value, then its callback."""
    driver.execute_script(f"""
        const node = {node_js};
        const widget = node.widgets.find(w => w.name === arguments[0])
                       ?? node.widgets.find(w => w.name === 'layout.' + arguments[0]);
        widget.value = arguments[1];
        widget.callback?.(widget.value, app.canvas, node);
        app.graph.setDirtyCanvas(true, true);""", name, value)


def _report(capsys, message: str) -> None:
    with capsys.disabled():
        print(f"\n[test_browser] {message}")


def test_plan_preview_shows_the_numbers_for_two_settings(page, capsys):
    _load_template(page, "cutdiffusion_sdxl_2048")
    _show_sampler(page)
    shown = _shown_plan(page, "width=2048")
    # The template runs the default, native first: a 1024² layout pass of all 50 steps, then the
    # last 25 at 2048² on the whole frame (4 native areas a step); the inputs it does not use are greyed.
    assert shown["visible"]
    assert shown["steps"] == "2048×2048 px · target pass: 25 steps on the whole frame"
    assert shown["evals"].startswith("150 model evaluations per image (300 with CFG)")
    assert shown["captions"] == ["no patches", "target pass: 25 steps, whole frame"]
    assert (shown["stage1_rects"], shown["stage2_rects"]) == (0, 1)
    greyed = page.execute_script(f"return {SAMPLER_JS}.widgets.filter(w => w.disabled).map(w => {STRIP_JS}(w.name))")
    assert "stage_split" in greyed and "layout_denoise" not in greyed and "target_pass" not in greyed
    # The preview names the unused inputs on the node (with a dynamic combo the paper's are not there).
    unused = page.execute_script(f"return {SAMPLER_JS}.cutdiffusion.element.querySelector('.cutdiff-inactive')"
                                 ".textContent")
    assert "stage_split" in unused and ("window_stride" in unused) != _layout_is_dynamic(), unused
    layout_line = "layout first: 1024×1024 px, 50 steps, {}, then the last 25 at full size"
    assert page.execute_script(f"return {SAMPLER_JS}.cutdiffusion.element.querySelector('.cutdiff-layout')"
                               ".textContent") == layout_line.format("latent upscale")
    page.save_screenshot(str(SHOTS / "plan_sdxl_2048_native_first.png"))

    # A VAE on the vae input: the layout is upscaled in pixel space, and the preview says so.
    page.execute_script(f"""
        const sampler = {SAMPLER_JS};
        const loader = LiteGraph.createNode('VAELoader');
        loader.pos = [sampler.pos[0] - 300, sampler.pos[1] + 400];
        app.graph.add(loader);
        loader.connect(0, sampler, sampler.findInputSlot('vae'));""")
    _shown_plan(page, "upscale=pixel")
    assert page.execute_script(f"return {SAMPLER_JS}.cutdiffusion.element.querySelector('.cutdiff-layout')"
                               ".textContent") == layout_line.format("pixel upscale (vae)")
    page.execute_script("app.graph.remove(app.graph.nodes.find(n => n.type === 'VAELoader'))")

    # The tiled target pass: 2x2 shifted tiles guided by the 2x2 patches, stage_split still unused.
    _set_widget(page, SAMPLER_JS, "target_pass", "tiles")
    _set_widget(page, SAMPLER_JS, "layout_denoise", 0.3)
    shown = _shown_plan(page, "target_pass=tiles")
    assert shown["steps"] == "2048×2048 px · steps: 0 + 15"
    assert shown["evals"].startswith("170 model evaluations per image (340 with CFG)")
    assert shown["captions"] == ["layout guidance: 2×2 patches", "stage 2: 15 steps, 2×2 shifted tiles"]
    assert (shown["stage1_rects"], shown["stage2_rects"]) == (4, 4)

    # Spec 3.5/3.6, the paper's layout: SDXL 2048², 50 steps, normal: 25/25, 4 patches, 9 windows.
    _set_widget(page, SAMPLER_JS, "layout", "patches")
    shown = _shown_plan(page, "layout=patches")
    assert shown["steps"] == "2048×2048 px · steps: 25 + 25"
    assert shown["evals"].startswith("325 model evaluations per image (650 with CFG)")
    assert shown["captions"] == ["stage 1: 25 steps, 2×2 patches", "stage 2: 25 steps, 3×3 windows"]
    assert (shown["stage1_rects"], shown["stage2_rects"]) == (4, 9)
    page.save_screenshot(str(SHOTS / "plan_sdxl_2048.png"))

    # The size comes from the Empty Latent Image upstream; the split follows the scheduler.
    _set_widget(page, "app.graph.nodes.find(n => n.type === 'EmptyLatentImage')", "width", 3072)
    _set_widget(page, "app.graph.nodes.find(n => n.type === 'EmptyLatentImage')", "height", 3072)
    _set_widget(page, SAMPLER_JS, "steps", 30)
    _set_widget(page, SAMPLER_JS, "scheduler", "karras")
    shown = _shown_plan(page, "scheduler=karras")
    expected = preview_plan({"width": 3072, "height": 3072, "steps": 30, "scheduler": "karras", "layout": "patches"})
    t1, t2 = expected["stage1_steps"], expected["stage2_steps"]
    assert (t1 + t2, t1 != 15) == (30, True)          # a noise-level split, not half the steps
    assert shown["steps"] == f"3072×3072 px · steps: {t1} + {t2}"
    assert shown["evals"].startswith(f"{t1 * 9 + t2 * 25} model evaluations per image")   # 3x3 patches, 5x5 windows
    assert (shown["stage1_rects"], shown["stage2_rects"]) == (9, 25)
    page.save_screenshot(str(SHOTS / "plan_3072_karras.png"))

    # The plan widget is display only: saved workflows and queued prompts never contain it.
    saved = page.execute_async_script(f"""
        const done = arguments[0];
        const node = {SAMPLER_JS};
        const workflow = app.graph.serialize().nodes.find(n => String(n.id) === String(node.id));
        app.graphToPrompt().then(p => done({{values: workflow.widgets_values,
            inputs: (workflow.inputs ?? []).map(i => i.name), prompt: Object.keys(p.output[node.id].inputs)}}));""")
    rt.init_nodes()   # the live definitions, in-process, to compare with
    widgets = uw.widget_specs("CutDiffusionKSampler")
    sent = uw.as_sent("CutDiffusionKSampler", {w.name: uw.default_value(w) for w in widgets} | {"layout": "patches"})
    shown = [w for w in widgets if w.name in sent or f"layout.{w.name}" in sent]   # the dynamic combo: patches' own
    assert len(saved["values"]) == sum(1 + w.extra_values for w in shown)
    assert "cutdiffusion_plan" not in saved["inputs"] + saved["prompt"]
    assert set(sent) <= set(saved["prompt"])
    _report(capsys, f"screenshots in {SHOTS}")


def _frontend_version(driver) -> str:
    return driver.execute_script("return window.__COMFYUI_FRONTEND_VERSION__ ?? 'unknown'")


def _set_vue_nodes(driver, enabled: bool) -> bool:
    """Switch Nodes 2.0 as the settings dialog does; True once the nodes render that way
    (a frontend without Vue nodes never draws .lg-node elements: False)."""
    error = driver.execute_async_script("""
        const [id, value, done] = arguments;
        Promise.resolve(app.extensionManager.setting.set(id, value)).then(() => done(null), e => done(String(e)));""",
        VUE_SETTING, enabled)
    assert error is None, error
    deadline = time.monotonic() + VUE_TIMEOUT_S
    while time.monotonic() < deadline:
        if driver.execute_script(f"return !!document.querySelector('.lg-node[data-node-id]') === {str(enabled).lower()}"):
            return True
        time.sleep(0.25)
    return False


def _advanced_by_server(class_type: str, layout: str | None = None) -> set[str]:
    """The inputs the running server marks advanced in /object_info (none on ComfyUI 0.3.75), those a
    dynamic combo shows with `layout` chosen included."""
    def marked(inputs: dict, chosen: str | None) -> set[str]:
        out = set()
        for name, spec in (item for section in ("required", "optional") for item in inputs.get(section, {}).items()):
            extra = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
            if spec[0] == "COMFY_DYNAMICCOMBO_V3":
                out |= marked(next(o["inputs"] for o in extra["options"] if o["key"] == chosen), None)
            elif extra.get("advanced"):
                out.add(name)
        return out
    return marked(comfy_server.shared().get_json(f"/object_info/{class_type}")[class_type]["input"], layout)


def _shown_widgets(driver, node_js: str) -> list[str]:
    """The widget names a user sees on a node: Vue-rendered rows (their labels) with Nodes 2.0,
    else the canvas widgets LiteGraph draws (isWidgetVisible; every widget before frontends with it)."""
    return driver.execute_script(f"""
        const node = {node_js};
        const host = document.querySelector(`.lg-node[data-node-id="${{node.id}}"]`);
        if (host) {{
            const label = row => Array.from(row.querySelectorAll('*'))
                .find(e => e.children.length === 0 && e.textContent.trim())?.textContent.trim();
            const labels = Array.from(host.querySelectorAll('.lg-node-widget')).map(label);
            return node.widgets.filter(w => labels.includes(w.label ?? w.name) || labels.includes(w.name))
                .map(w => {STRIP_JS}(w.name));
        }}
        return node.widgets.filter(w => node.isWidgetVisible ? node.isWidgetVisible(w) : !w.hidden)
            .map(w => {STRIP_JS}(w.name));""")


@pytest.mark.parametrize("vue_nodes", [False, True], ids=["classic_canvas", "nodes_2_0"])
def test_plan_preview_in_both_renderers(page, vue_nodes, capsys):
    """The plan preview is a DOM widget: visible on the node with the classic canvas and with
    Nodes 2.0, with the numbers of the pack's own plan, following an upstream size change (which
    calls nothing on the sampler; Nodes 2.0 draws no node bodies on the canvas). Expert inputs
    are hidden wherever the frontend hides advanced inputs (as it does for ComfyUI's own)."""
    version = _frontend_version(page)
    try:
        if not _set_vue_nodes(page, vue_nodes):
            pytest.skip(f"frontend {version} renders no Vue nodes ({VUE_SETTING})")
        _load_template(page, "cutdiffusion_sdxl_2048")
        _show_sampler(page)
        latent = "app.graph.nodes.find(n => n.type === 'EmptyLatentImage')"
        size = (3072, 2048) if vue_nodes else (2048, 3072)
        _set_widget(page, latent, "width", size[0])
        _set_widget(page, latent, "height", size[1])
        _set_widget(page, SAMPLER_JS, "steps", 30)
        _set_widget(page, SAMPLER_JS, "scheduler", "karras")
        _set_widget(page, SAMPLER_JS, "layout", "patches")
        _set_widget(page, SAMPLER_JS, "stage_split", 0.6)
        _shown_plan(page, "stage_split=0.6")   # the last change: the query then has all of them
        _bring_plan_into_view(page)
        shown = _shown_plan(page, "stage_split=0.6")
        page.save_screenshot(str(SHOTS / f"plan_{'nodes_2_0' if vue_nodes else 'classic'}.png"))

        expected = preview_plan({"width": size[0], "height": size[1], "steps": 30, "cfg": 7.5,
                                 "scheduler": "karras", "stage_split": 0.6, "layout": "patches"})
        t1, t2, grid, windows = (expected["stage1_steps"], expected["stage2_steps"], expected["grid"],
                                 expected["windows"])
        assert shown["dom_widget"] and shown["visible"], shown
        assert shown["in_vue_node"] == vue_nodes, shown
        if vue_nodes:   # saved on the classic canvas, every input shown (932 px): no empty node under the preview
            assert abs(shown["height"] - 300) <= 2 and shown["below"] < 80, shown   # 60 px: badge, "advanced" button
            # Nodes 2.0 switched on with the workflow open (the classic canvas has grown the node back).
            assert _set_vue_nodes(page, False) and _set_vue_nodes(page, True)
            time.sleep(1)   # a few polls
            _bring_plan_into_view(page)
            again = _shown_plan(page, "stage_split=0.6")
            assert abs(again["height"] - 300) <= 2 and again["below"] < 80, again
        assert shown["steps"] == f"{size[0]}×{size[1]} px · steps: {t1} + {t2}"
        assert shown["evals"].startswith(
            f"{expected['evaluations_per_image']} model evaluations per image "
            f"({expected['evaluations_with_cfg']} with CFG) · MultiDiffusion: {expected['multidiffusion_evaluations']}")
        assert shown["captions"] == [f"stage 1: {t1} steps, {grid['rows']}×{grid['cols']} patches",
                                     f"stage 2: {t2} steps, {windows['rows']}×{windows['cols']} windows"]
        assert (shown["stage1_rects"], shown["stage2_rects"]) == (grid["rows"] * grid["cols"], windows["count"])

        # Advanced inputs: hidden by default where the frontend hides them, like its own nodes' ones.
        advanced = _advanced_by_server("CutDiffusionKSampler", "patches")
        widgets = _shown_widgets(page, SAMPLER_JS)
        expected_basic = set(SAMPLER_BASIC_WIDGETS) - (_shown_settings("native first") - _shown_settings("patches"))
        if not advanced:
            assert expected_basic <= set(widgets), widgets
            _report(capsys, f"frontend {version}, {'Nodes 2.0' if vue_nodes else 'classic canvas'}: plan shown; "
                            f"this ComfyUI marks no input advanced, all {len(widgets)} widgets shown")
            return
        assert advanced == ({w.name for w in uw.widget_specs("CutDiffusionKSampler")} & _shown_settings("patches")
                            - set(SAMPLER_BASIC_WIDGETS))
        reference_hidden = _frontend_hides_advanced(page)
        shown_advanced = advanced & set(widgets)
        assert expected_basic <= set(widgets), widgets
        assert shown_advanced == (set() if reference_hidden else advanced), widgets
        if reference_hidden and vue_nodes:
            # ...and the node's own "Show advanced inputs" brings them back.
            page.execute_script(f"""
                const node = {SAMPLER_JS};
                document.querySelector(`.lg-node[data-node-id="${{node.id}}"] [data-testid=advanced-inputs-button]`)
                  .click();""")
            _wait(page, f"{SAMPLER_JS}.showAdvanced", PAGE_TIMEOUT_S, "Show advanced inputs")
            time.sleep(0.5)
            assert advanced <= set(_shown_widgets(page, SAMPLER_JS))
        basic = [w for w in widgets if w != "cutdiffusion_plan"]
        _report(capsys, f"frontend {version}, {'Nodes 2.0' if vue_nodes else 'classic canvas'}: plan shown; "
                        f"{len(basic)} widgets by default ({', '.join(basic)}); advanced inputs "
                        f"{'hidden' if reference_hidden else 'shown (this renderer shows every advanced input, ComfyUI’s own too)'}")
    finally:
        _set_vue_nodes(page, False)


def _set_setting(driver, setting: str, value) -> None:
    error = driver.execute_async_script("""
        const [id, value, done] = arguments;
        Promise.resolve(app.extensionManager.setting.set(id, value)).then(() => done(null), e => done(String(e)));""",
        setting, value)
    assert error is None, error


def test_side_panel_lists_the_inputs_not_the_previews(page, capsys):
    """The side panel (frontend 1.49+) lists a selected node's inputs; the plan preview is no input:
    no row of its own there, and the preview on the node keeps its width after the panel was open."""
    version = _frontend_version(page)
    if not page.execute_script("return app.extensionManager.setting.get('Comfy.RightSidePanel.IsOpen') !== undefined"):
        pytest.skip(f"frontend {version} has no side panel")
    _load_template(page, "cutdiffusion_sdxl_2048")
    _show_sampler(page)
    width = page.execute_script(f"return {SAMPLER_JS}.cutdiffusion.element.getBoundingClientRect().width")
    page.execute_script(f"app.canvas.selectNode({SAMPLER_JS});")
    _set_setting(page, "Comfy.RightSidePanel.IsOpen", True)
    try:
        listed = _wait(page, "document.querySelector('[data-testid=properties-panel]')?.textContent.includes('layout_denoise')"
                             " && document.querySelector('[data-testid=properties-panel]').textContent",
                       PAGE_TIMEOUT_S, "the side panel listing the sampler's inputs")
        page.save_screenshot(str(SHOTS / "side_panel.png"))
    finally:
        _set_setting(page, "Comfy.RightSidePanel.IsOpen", False)
    assert "target_pass" in listed and "cutdiffusion_plan" not in listed, listed
    time.sleep(0.5)
    after = page.execute_script(f"return {SAMPLER_JS}.cutdiffusion.element.getBoundingClientRect().width")
    assert abs(after - width) <= 2, (width, after)
    _report(capsys, f"frontend {version}: side panel lists the inputs, no preview row; preview {after:.0f} px wide")


def _frontend_hides_advanced(driver) -> bool:
    """Whether this renderer hides an advanced input of ComfyUI's own VAEDecodeTiled by default."""
    assert "tile_size" in _advanced_by_server("VAEDecodeTiled")
    driver.execute_script(f"""
        const sampler = {SAMPLER_JS};
        const node = LiteGraph.createNode('VAEDecodeTiled');
        node.pos = [sampler.pos[0] + 420, sampler.pos[1] + 600];   // on screen, not culled
        app.graph.add(node);
        window.__cutdiffReference = node;""")
    try:
        if driver.execute_script("return !!document.querySelector('.lg-node[data-node-id]')"):
            _wait(driver, "document.querySelector(`.lg-node[data-node-id=\"${window.__cutdiffReference.id}\"]`)",
                  PAGE_TIMEOUT_S, "the Vue-rendered VAEDecodeTiled")
            time.sleep(0.5)
        return "tile_size" not in _shown_widgets(driver, "window.__cutdiffReference")
    finally:
        driver.execute_script("app.graph.remove(window.__cutdiffReference); delete window.__cutdiffReference;")


def test_demo_workflow_runs_from_the_run_button(page, capsys):
    from selenium.webdriver.common.by import By

    rt.init_nodes()   # the live definitions, for the saved widget values
    _load_template(page, "cutdiffusion_demo_model")
    _show_sampler(page)
    shown = _shown_plan(page, "model_source=CutDiffusionDemoModel")
    # The workflow runs the defaults: a layout pass at the native area, then the last 6 of its 12 steps
    # on the whole 512x256 px frame.
    assert shown["captions"] == ["no patches", "target pass: 6 steps, whole frame"], shown
    page.find_element(By.CSS_SELECTOR, "[data-testid='queue-button']").click()
    report = _wait(page, f"{SAMPLER_JS}.cutdiffusion.lastRun", RUN_TIMEOUT_S, "the run's report on the node")
    assert "native-first layout" in report and "the last 6 on the whole frame (512x256 px" in report, report
    save_id = page.execute_script("return app.graph.nodes.find(n => n.type === 'SaveImage').id")
    _wait(page, f"app.nodeOutputs[{save_id!r}]?.images?.length", PAGE_TIMEOUT_S, "the saved image on SaveImage")
    time.sleep(1)  # let the image preview decode before the screenshot
    page.save_screenshot(str(SHOTS / "demo_run.png"))

    # Chain AdaptiveDiffusion in front of the sampler, as a user would, and run again: its
    # websocket report (evaluations made / skipped) shows on the sampler it feeds.
    page.execute_script(f"""
        const sampler = {SAMPLER_JS};
        const demo = app.graph.nodes.find(n => n.type === 'CutDiffusionDemoModel');
        const adaptive = LiteGraph.createNode('AdaptiveDiffusion');
        adaptive.pos = [demo.pos[0], demo.pos[1] + 480];
        app.graph.add(adaptive);
        demo.connect(0, adaptive, 0);
        adaptive.connect(0, sampler, sampler.findInputSlot('model'));""")
    page.find_element(By.CSS_SELECTOR, "[data-testid='queue-button']").click()
    adaptive = _wait(page, f"{SAMPLER_JS}.cutdiffusion.adaptive", RUN_TIMEOUT_S, "AdaptiveDiffusion's report")
    made, skipped = map(int, re.fullmatch(r"AdaptiveDiffusion: (\d+) evaluations made, (\d+) skipped",
                                          adaptive).groups())
    # One per step of each pass (12 + 6); the warm-up steps always run.
    assert made + skipped == 12 + 6 and made >= 4, adaptive
    # The same line on AdaptiveDiffusion itself, as a DOM widget that is never saved.
    on_node = page.execute_script("""
        const node = app.graph.nodes.find(n => n.type === 'AdaptiveDiffusion');
        const widget = node.widgets.find(w => w.name === 'cutdiffusion_adaptive_report');
        const saved = app.graph.serialize().nodes.find(n => String(n.id) === String(node.id));
        const box = widget?.element?.getBoundingClientRect();
        const hit = box && document.elementFromPoint(box.x + box.width / 2, box.y + box.height / 2);
        return {text: widget?.element?.textContent, values: saved.widgets_values.length,
                shown: !!widget?.element?.isConnected && box.height >= 12 && widget.element.contains(hit)};""")
    assert on_node["text"] == adaptive and on_node["shown"], on_node
    assert on_node["values"] == sum(1 + w.extra_values for w in uw.widget_specs("AdaptiveDiffusion"))
    page.save_screenshot(str(SHOTS / "demo_adaptive_run.png"))
    _report(capsys, f"demo run: {report}; {adaptive}; screenshots in {SHOTS}")


def test_workflows_saved_earlier_keep_what_they_ran(page):
    """The frontend hook (web/js/cutdiffusion.js restoreSavedSettings): a CutDiffusion KSampler saved with
    the earlier settings order (`layout` and its inputs last) gets every value back by name, in the
    widgets and in the prompt sent to the server; one saved before `layout` existed runs the paper's
    `patches`, one saved before `target_pass` the tiles it ran; today's saves and new nodes are
    untouched. Where `layout` is a dynamic combo (0.33.0) a save with every setting its own widget
    (the shipped workflows, saves from 0.3.75) shows and sends the chosen layout's settings, as saved."""
    import json

    earlier = json.loads((rt.REPO_ROOT / "tests" / "data" / "demo_workflow_saved_before_layout_first.json").read_text())
    sampler = next(n for n in earlier["nodes"] if n["type"] == "CutDiffusionKSampler")
    earlier_order = ["seed", "control_after_generate", "steps", "cfg", "sampler_name", "scheduler", "denoise",
                     "patch_size", "window_stride", "stage_split", "window_batch_size", "window_jitter",
                     "pixel_interaction", "stage2_mode", "window_weights", "min_stage1_steps", "global_guidance",
                     "layout", "layout_denoise", "layout_guidance", "target_pass"]
    values = list(sampler["widgets_values"])
    assert len(values) == len(earlier_order)
    saved = dict(zip(earlier_order, values))

    def load_and_read(workflow, values) -> dict:
        node = next(n for n in workflow["nodes"] if n["type"] == "CutDiffusionKSampler")
        node["widgets_values"] = values
        error = page.execute_async_script("""
            const [wf, done] = arguments;
            app.loadGraphData(wf, true, true, 'order-check').then(() => done(null), e => done(String(e)));""",
            workflow)
        assert error is None, error
        return page.execute_async_script(f"""
            const done = arguments[0];
            const node = {SAMPLER_JS};
            const fresh = LiteGraph.createNode('CutDiffusionKSampler');
            const read = n => Object.fromEntries(n.widgets.filter(w => w.name !== 'cutdiffusion_plan')
                                                           .map(w => [{STRIP_JS}(w.name), w.value]));
            app.graphToPrompt().then(p => done({{widgets: read(node), fresh: read(fresh),
                prompt: Object.fromEntries(Object.entries(p.output[String(node.id)].inputs)
                                                 .map(([k, v]) => [{STRIP_JS}(k), v]))}}));""")

    def shown(layout: str, names) -> list[str]:
        """`names` less the settings a node does not show with `layout` chosen."""
        from comfyui_cutdiffusion.cutdiff_core.config import SETTINGS
        settings = {s.name for s in SETTINGS}
        return [n for n in names if n not in settings or n in _shown_settings(layout)]

    got = load_and_read(earlier, values)
    kept = shown(saved["layout"], earlier_order)
    assert {n: got["widgets"].get(n) for n in kept} == {n: saved[n] for n in kept}, got["widgets"]
    assert set(got["widgets"]) == set(kept), got["widgets"]   # the other layout's settings: not on the node
    assert {n: got["prompt"].get(n) for n in kept if n != "control_after_generate"} == \
        {n: saved[n] for n in kept if n != "control_after_generate"}, got["prompt"]
    assert (got["fresh"]["layout"], got["fresh"]["target_pass"]) == ("native first", "whole frame")

    # Saved before `layout` existed: the paper's layout, the rest as saved.
    before_layout = load_and_read(earlier, values[:earlier_order.index("layout")])["widgets"]
    assert before_layout["layout"] == "patches" and before_layout.get("target_pass", "tiles") == "tiles"
    assert "target_pass" in before_layout or _layout_is_dynamic()
    assert [before_layout[n] for n in shown("patches", earlier_order[:earlier_order.index("layout")])] == \
        [saved[n] for n in shown("patches", earlier_order[:earlier_order.index("layout")])]
    # Saved with native first before `target_pass` existed (issue 23): the tiles it ran.
    native_first = list(values)
    native_first[earlier_order.index("layout")] = "native first"
    before_target = load_and_read(earlier, native_first[:earlier_order.index("target_pass")])["widgets"]
    assert (before_target["layout"], before_target["layout_denoise"], before_target["target_pass"]) == \
        ("native first", 0.4, "tiles")

    # Today's flat order (the shipped workflows) loads as saved.
    today = json.loads((rt.REPO_ROOT / "workflows" / "cutdiffusion_demo_model.json").read_text())
    today_values = next(n for n in today["nodes"] if n["type"] == "CutDiffusionKSampler")["widgets_values"]
    names = ["seed", "control_after_generate", *[spec.name for spec in uw.widget_specs("CutDiffusionKSampler")][1:]]
    as_saved = dict(zip(names, today_values))
    loaded = load_and_read(today, list(today_values))["widgets"]
    kept = shown(as_saved["layout"], names)
    assert {n: loaded[n] for n in kept} == {n: as_saved[n] for n in kept} and set(loaded) == set(kept), loaded
    # ...and this frontend's own save of it (the dynamic combo's form, where it has one) loads as saved.
    resaved = page.execute_script("return app.graph.serialize()")
    again = next(n for n in resaved["nodes"] if n["type"] == "CutDiffusionKSampler")["widgets_values"]
    assert load_and_read(resaved, list(again))["widgets"] == loaded


def test_the_patch_node_loads_flat_saves_by_name(page):
    """CutDiffusion (MODEL -> MODEL) has no widget before `layout`: a save with every setting its own
    widget (0.3.75's form) loads by name there too, each setting its layout shows with its saved value."""
    from comfyui_cutdiffusion.cutdiff_core.config import SETTINGS

    saved = {"layout": "native first", "target_pass": "tiles", "layout_denoise": 0.35, "layout_guidance": 0.8,
             "patch_size": 512, "window_stride": 128, "stage_split": 0.55, "window_batch_size": 2,
             "window_jitter": False, "pixel_interaction": False, "stage2_mode": "shifted",
             "window_weights": "feathered", "min_stage1_steps": 1, "global_guidance": 0.2}
    assert list(saved) == [s.name for s in SETTINGS]
    for layout in ("native first", "patches"):
        node = {"id": 1, "type": "CutDiffusion", "pos": [0, 0], "size": [320, 420], "flags": {}, "order": 0,
                "mode": 0, "properties": {}, "widgets_values": list({**saved, "layout": layout}.values())}
        workflow = {"last_node_id": 1, "last_link_id": 0, "nodes": [node], "links": [], "groups": [],
                    "config": {}, "extra": {}, "version": 0.4}
        widgets = page.execute_async_script(f"""
            const [wf, done] = arguments;
            app.loadGraphData(wf, true, true, 'patch-node-check').then(() => {{
                const node = app.graph.nodes.find(n => n.comfyClass === 'CutDiffusion');
                done(Object.fromEntries(node.widgets.map(w => [{STRIP_JS}(w.name), w.value])));
            }}, e => done(String(e)));""", workflow)
        expected = {name: value for name, value in {**saved, "layout": layout}.items() if name in _shown_settings(layout)}
        assert widgets == expected, (layout, widgets)
