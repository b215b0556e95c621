"""ComfyUI's UI workflow format (what the frontend saves and the template browser loads),
read against the live node definitions: used by tests/test_workflows.py to validate the
shipped workflows and by scripts/build_workflows.py to write them.

A UI node stores its widget values as a list (`widgets_values`) in the order of the node's
widget inputs (required, then optional), where the frontend adds one extra value after an
INT with `control_after_generate` ("fixed", "randomize", ...) and after an image input
with `image_upload` (the upload button's "image"). Links are
`[id, origin_node, origin_slot, target_node, target_slot, type]`.
"""
from __future__ import annotations

from dataclasses import dataclass

WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}
# V3's DynamicCombo (ComfyUI 0.33.0): a combo whose options each show their own inputs. The workflows
# here are written in the flat form (every input its own widget, as where ComfyUI has none), which
# the pack's web extension reads by name where it has one.
DYNAMIC_COMBO = "COMFY_DYNAMICCOMBO_V3"
CONTROL_VALUES = ("fixed", "increment", "decrement", "randomize")


@dataclass(frozen=True)
class WidgetSpec:
    name: str
    type: str                 # INT, FLOAT, STRING, BOOLEAN or COMBO
    options: dict
    extra_values: int         # values the frontend stores after this one (control / upload widgets)

    @property
    def choices(self) -> list | None:
        return self.options.get("options") if self.type == "COMBO" else None


def node_class(class_type: str):
    import nodes
    return nodes.NODE_CLASS_MAPPINGS[class_type]


def flat_inputs(class_type: str):
    """(name, type, options) of each input in the flat form, in order."""
    yield from _flat_items(node_class(class_type).INPUT_TYPES())


def _flat_items(spec: dict):
    for section in ("required", "optional"):
        for name, value in spec.get(section, {}).items():
            kind = value[0]
            options = dict(value[1]) if len(value) > 1 and value[1] else {}
            if isinstance(kind, list):  # legacy combo: the options are the type
                kind, options = "COMBO", {**options, "options": kind}
            if kind == DYNAMIC_COMBO:
                yield name, "COMBO", {"options": [o["key"] for o in options["options"]]}
                yield from _merged_option_inputs(options["options"])
                continue
            yield name, kind, options


def _merged_option_inputs(options: list[dict]):
    """A dynamic combo's inputs in the flat form: every option's inputs once, each option's in its
    own order (an input first met in a later option follows the one before it there)."""
    merged: dict[str, tuple] = {}
    for option in options:
        previous = None
        for name, kind, extra in _flat_items(option["inputs"]):
            if name not in merged:
                keys = list(merged)
                at = keys.index(previous) + 1 if previous is not None else len(keys)
                merged = {k: merged[k] for k in keys[:at]} | {name: (name, kind, extra)} | \
                         {k: merged[k] for k in keys[at:]}
            previous = name
    yield from merged.values()


def widget_specs(class_type: str) -> list[WidgetSpec]:
    out = []
    for name, kind, options in flat_inputs(class_type):
        if kind not in WIDGET_TYPES or options.get("forceInput"):
            continue
        extra = int(bool(options.get("control_after_generate"))) + int(bool(options.get("image_upload")))
        out.append(WidgetSpec(name, kind, options, extra))
    return out


def default_value(spec: WidgetSpec):
    """The value a freshly added node shows: the declared default, else a combo's first option."""
    value = spec.options.get("default")
    if value is None and spec.choices:
        value = spec.choices[0]
    return value


def link_inputs(class_type: str) -> list[tuple[str, str]]:
    """(name, type) of the inputs that are sockets only (no widget)."""
    widgets = {w.name for w in widget_specs(class_type)}
    return [(name, kind) for name, kind, _ in flat_inputs(class_type) if name not in widgets]


def outputs(class_type: str) -> list[tuple[str, str]]:
    cls = node_class(class_type)
    types = list(cls.RETURN_TYPES)
    names = list(getattr(cls, "RETURN_NAMES", None) or types)
    return list(zip(names, types))


def widget_values_by_name(node: dict) -> dict:
    """{input name: value} for a UI node's widgets_values; raises ValueError on a count mismatch."""
    specs = widget_specs(node["type"])
    values = list(node.get("widgets_values") or [])
    expected = sum(1 + s.extra_values for s in specs)
    if len(values) != expected:
        raise ValueError(f"node {node['id']} ({node['type']}): {len(values)} widget values, expected {expected} "
                         f"for {[s.name for s in specs]}")
    out, i = {}, 0
    for spec in specs:
        out[spec.name] = values[i]
        if spec.options.get("control_after_generate") and values[i + 1] not in CONTROL_VALUES:
            raise ValueError(f"node {node['id']}: control value {values[i + 1]!r} after {spec.name} "
                             f"is not one of {CONTROL_VALUES}")
        i += 1 + spec.extra_values
    return out


def widget_value_errors(node: dict) -> list[str]:
    """Each widget value must fit its input: type, min/max, one of a combo's options.

    (ComfyUI's validate_prompt checks ranges but, in 0.3.75, not the options of V3 combos.)
    """
    specs = {s.name: s for s in widget_specs(node["type"])}
    errors = []
    for name, value in widget_values_by_name(node).items():
        spec, where = specs[name], f"node {node['id']} ({node['type']}).{name} = {value!r}"
        if spec.type == "COMBO":
            if value not in (spec.choices or []):
                errors.append(f"{where}: not one of the options")
            continue
        expected = {"INT": int, "FLOAT": (int, float), "BOOLEAN": bool, "STRING": str}[spec.type]
        if not isinstance(value, expected) or (spec.type != "BOOLEAN" and isinstance(value, bool)):
            errors.append(f"{where}: not a {spec.type}")
            continue
        low, high = spec.options.get("min"), spec.options.get("max")
        if (low is not None and value < low) or (high is not None and value > high):
            errors.append(f"{where}: outside [{low}, {high}]")
    return errors


def link_errors(workflow: dict) -> list[str]:
    """Every link must join an existing output to an existing input of the same type."""
    nodes = {n["id"]: n for n in workflow["nodes"]}
    errors = []
    for link_id, origin, origin_slot, target, target_slot, link_type in workflow["links"]:
        if origin not in nodes or target not in nodes:
            errors.append(f"link {link_id}: node {origin if origin not in nodes else target} does not exist")
            continue
        node_outputs = outputs(nodes[origin]["type"])
        if origin_slot >= len(node_outputs):
            errors.append(f"link {link_id}: {nodes[origin]['type']} has no output {origin_slot}")
            continue
        target_inputs = nodes[target].get("inputs", [])
        if target_slot >= len(target_inputs) or target_inputs[target_slot].get("link") != link_id:
            errors.append(f"link {link_id}: input {target_slot} of node {target} does not hold it")
            continue
        input_name = target_inputs[target_slot]["name"]
        declared = dict(link_inputs(nodes[target]["type"]))
        if input_name not in declared:
            errors.append(f"link {link_id}: {nodes[target]['type']} has no socket input {input_name!r}")
            continue
        types = {link_type, node_outputs[origin_slot][1], declared[input_name]}
        if len(types - {"*"}) > 1:
            errors.append(f"link {link_id}: types differ: link {link_type}, output "
                          f"{node_outputs[origin_slot][1]}, input {input_name} {declared[input_name]}")
    return errors


def to_api_prompt(workflow: dict) -> dict:
    """The API-format prompt the frontend would queue for this workflow (all nodes active)."""
    nodes = {n["id"]: n for n in workflow["nodes"]}
    links = {link[0]: link for link in workflow["links"]}
    prompt = {}
    for node in workflow["nodes"]:
        inputs = as_sent(node["type"], widget_values_by_name(node))
        for slot in node.get("inputs", []):
            if slot.get("link") is not None:
                _, origin, origin_slot, *_ = links[slot["link"]]
                inputs[slot["name"]] = [str(nodes[origin]["id"]), origin_slot]
        prompt[str(node["id"])] = {"class_type": node["type"], "inputs": inputs}
    return prompt


def as_sent(class_type: str, values: dict) -> dict:
    """Widget values as the frontend sends them: a dynamic combo's chosen option's inputs named
    "<combo>.<input>", the other options' inputs left out."""
    spec = node_class(class_type).INPUT_TYPES()
    out = dict(values)
    for section in ("required", "optional"):
        for name, value in spec.get(section, {}).items():
            if value[0] != DYNAMIC_COMBO:
                continue
            options = value[1]["options"]
            chosen = next(o for o in options if o["key"] == values[name])
            for nested, _, _ in _merged_option_inputs(options):
                out.pop(nested)
            out.update({f"{name}.{nested}": values[nested] for nested, _, _ in _flat_items(chosen["inputs"])})
    return out
