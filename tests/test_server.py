"""The pack installed into a fresh ComfyUI, as a user gets it: a copy of the repository in
custom_nodes/ of a real server process (main.py, official frontend), seen over HTTP."""
import tomllib

import pytest

from cutdiff_dev import comfy_runtime as rt
from cutdiff_dev import comfy_server

PACK = comfy_server.PACK_DIR_NAME
PACK_NODES = {"CutDiffusion", "CutDiffusionKSampler", "AdaptiveDiffusion", "CutDiffusionDemoModel", "CutDiffusionDemoDiT",
              "CutDiffusionDemoDecode"}


@pytest.fixture(scope="module")
def server():
    return comfy_server.shared()


def test_nodes_are_registered_from_custom_nodes(server):
    info = server.get_json("/object_info")
    assert PACK_NODES <= set(info), server.log_tail()
    sampler = info["CutDiffusionKSampler"]
    # The frontend finds node docs and the pack's identity through python_module.
    assert sampler["python_module"] == f"custom_nodes.{PACK}"
    assert sampler["display_name"] == "CutDiffusion KSampler"
    # The settings are optional inputs (so `layout` can come first after KSampler's required ones).
    assert "denoise" in sampler["input"]["required"]
    layout, *rest = sampler["input"]["optional"].items()
    assert layout[0] == "layout" and rest[0][0] in ("target_pass", "vae")
    if layout[1][0] == "COMFY_DYNAMICCOMBO_V3":   # 0.33.0: under each layout its own settings
        options = {o["key"]: list(o["inputs"]["optional"]) for o in layout[1][1]["options"]}
        assert list(options) == ["native first", "patches"] and options["native first"][0] == "target_pass"
        assert "window_stride" in options["patches"] and "window_stride" not in options["native first"]
    else:
        assert rest[0][0] == "target_pass"


def test_workflows_are_in_the_template_browser(server):
    shipped = sorted(p.stem for p in (rt.REPO_ROOT / "workflows").glob("*.json"))
    listed = server.get_json("/workflow_templates")
    assert sorted(listed.get(PACK, [])) == shipped
    for name in shipped:
        workflow = server.get_json(f"/api/workflow_templates/{PACK}/{name}.json")
        assert workflow["nodes"], name
        assert server.get_bytes(f"/api/workflow_templates/{PACK}/{name}.jpg")[:3] == b"\xff\xd8\xff", name


def test_web_extension_and_node_docs_are_served(server):
    scripts = server.get_json("/extensions")
    assert f"/extensions/{PACK}/js/cutdiffusion.js" in scripts
    # Where the 1.32 frontend's node help looks for a custom node's page.
    for node in PACK_NODES:
        page = server.get_bytes(f"/extensions/{PACK}/docs/{node}.md").decode()
        assert page.startswith("# "), node


def test_plan_route_answers_and_refuses_like_the_node(server):
    plan = server.get_json("/api/cutdiffusion/plan?width=2048&height=2048&steps=50&scheduler=normal&layout=patches")
    assert (plan["stage1_steps"], plan["stage2_steps"]) == (25, 25)   # the paper's 25/25 (spec 3.5)
    assert (plan["grid"]["rows"], plan["grid"]["cols"], plan["windows"]["count"]) == (2, 2, 9)
    with pytest.raises(Exception) as refused:
        server.get_json("/api/cutdiffusion/plan?width=2048&height=2048&window_stride=4096")
    assert getattr(refused.value, "code", None) == 400


def test_registry_metadata():
    meta = tomllib.loads((rt.REPO_ROOT / "pyproject.toml").read_text())
    project, comfy = meta["project"], meta["tool"]["comfy"]
    assert project["name"] and project["version"] and project["description"] and project["license"]
    assert project["urls"]["Repository"]
    assert comfy["PublisherId"] and comfy["DisplayName"]
    # The icon is a URL to a file of this repository's main branch.
    assert comfy["Icon"].startswith("https://") and "/main/" in comfy["Icon"]
    assert (rt.REPO_ROOT / comfy["Icon"].split("/main/", 1)[1]).is_file()
