"""Development harness: the real ComfyUI in process (comfy_runtime), a ComfyUI server
(comfy_server), tiny test models and UI-format workflows. Used by tests, benchmarks and
scripts; never by the pack itself. The venv built by scripts/setup_env.sh has the repository
on its path, so `import cutdiff_dev` works from any of them."""
