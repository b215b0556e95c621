"""The pack in the official ComfyUI frontend, driven like a user in headless Chromium.

A real server (tests/comfy_server.py) with the pack copied into custom_nodes/, Debian's
Chromium through its chromedriver (Selenium; no browser download). Checks that the plan
preview on CutDiffusion KSampler shows the right numbers for two settings and that the demo
workflow runs from the Run button, and saves screenshots (the folder is printed).
"""
import os
import re
import shutil
import tempfile
import time

import pytest

import comfy_runtime as rt
import comfy_server
import ui_workflow as uw
from comfyui_cutdiffusion.nodes.plan_route import preview_plan

CHROMIUM = "/usr/lib/chromium/chromium"   # the binary itself: /usr/bin/chromium is a wrapper script
CHROMEDRIVER = "/usr/bin/chromedriver"
SHOTS = rt.REPO_ROOT / "out" / "browser"
PACK = comfy_server.PACK_DIR_NAME
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--window-size=1600,1000"]
# A first visit shows a template browser, a missing-model dialog (no SDXL checkpoint here), the
# minimap and a "Nodes 2.0" banner over the canvas; the plan widget is drawn by the classic canvas.
SETTINGS = {"Comfy.TutorialCompleted": True, "Comfy.Workflow.ShowMissingModelsWarning": False,
            "Comfy.Minimap.Visible": False, "Comfy.VueNodes.Enabled": False}
PAGE_TIMEOUT_S = 60
RUN_TIMEOUT_S = 240


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


def _shown_plan(driver, expected_query_part: str) -> dict:
    """The plan the node shows once its query contains `expected_query_part`: the data it drew
    and the text and rectangles a user sees."""
    _wait(driver, f"{SAMPLER_JS}.cutdiffusion.plan && {SAMPLER_JS}.cutdiffusion.shownQuery.includes("
                  f"{expected_query_part!r})", PAGE_TIMEOUT_S, f"a plan for {expected_query_part}")
    return driver.execute_script(f"""
        const state = {SAMPLER_JS}.cutdiffusion;
        const text = cls => state.element.querySelector(cls)?.textContent;
        const svgs = state.element.querySelectorAll('svg');
        return {{plan: state.plan, steps: text('.cutdiff-steps'), evals: text('.cutdiff-evals'),
                 captions: Array.from(state.element.querySelectorAll('.cutdiff-caption')).map(c => c.textContent),
                 stage1_rects: svgs[0].querySelectorAll('rect').length - 1,
                 stage2_rects: svgs[1].querySelectorAll('rect').length - 1,
                 visible: state.element.getBoundingClientRect().height > 100}};""")


def _set_widget(driver, node_js: str, name: str, value) -> None:
    """Change a widget as the UI does: its value, then its callback."""
    driver.execute_script(f"""
        const node = {node_js};
        const widget = node.widgets.find(w => w.name === arguments[0]);
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
    # Spec 3.5/3.6: SDXL 2048², 50 steps, normal: the paper's 25/25, 4 patches, 9 windows.
    assert shown["visible"]
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
    expected = preview_plan({"width": 3072, "height": 3072, "steps": 30, "scheduler": "karras"})
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
        const workflow = app.graph.serialize().nodes.find(n => n.id === node.id);
        app.graphToPrompt().then(p => done({{values: workflow.widgets_values,
            inputs: (workflow.inputs ?? []).map(i => i.name), prompt: Object.keys(p.output[node.id].inputs)}}));""")
    rt.init_nodes()   # the live definitions, in-process, to compare with
    widgets = uw.widget_specs("CutDiffusionKSampler")
    assert len(saved["values"]) == sum(1 + w.extra_values for w in widgets)
    assert "cutdiffusion_plan" not in saved["inputs"] + saved["prompt"]
    assert {w.name for w in widgets} <= set(saved["prompt"])
    _report(capsys, f"screenshots in {SHOTS}")


def test_demo_workflow_runs_from_the_run_button(page, capsys):
    from selenium.webdriver.common.by import By

    _load_template(page, "cutdiffusion_demo_model")
    _show_sampler(page)
    shown = _shown_plan(page, "model_source=CutDiffusionDemoModel")
    assert shown["captions"][0].endswith("2×4 patches")   # the workflow's size: 4x2 times the demo's native size
    page.find_element(By.CSS_SELECTOR, "[data-testid='queue-button']").click()
    report = _wait(page, f"{SAMPLER_JS}.cutdiffusion.lastRun", RUN_TIMEOUT_S, "the run's report on the node")
    assert "made" in report and "evaluations" in report, report
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
    assert made + skipped == 12 and made >= 4, adaptive   # one per step; the warm-up steps always run
    page.save_screenshot(str(SHOTS / "demo_adaptive_run.png"))
    _report(capsys, f"demo run: {report}; {adaptive}; screenshots in {SHOTS}")
