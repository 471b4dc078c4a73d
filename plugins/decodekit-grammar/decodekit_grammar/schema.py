"""JSON Schema loading and the keyword check for the outlines-core backend.

outlines-core 0.2.14 ignores some keywords silently (``minimum``, ``maximum``, ``uniqueItems``,
``patternProperties``, ...) and raises on others (``allOf``, ``not``, ``if``). Compiling a schema
whose keywords it ignores would produce outputs that fail validation, so the outlines backend
accepts only the keywords below and refuses the rest with an error naming the keyword and
where it is. llguidance reports its own unimplemented keywords; the plugin turns them into the
same kind of error.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

# Keywords the outlines-core regex builder implements faithfully (its outputs validate).
OUTLINES_KEYWORDS = {
    "type", "properties", "required", "additionalProperties", "items", "prefixItems",
    "minItems", "maxItems", "enum", "const", "anyOf", "$ref", "$defs", "definitions",
    "minLength", "maxLength", "pattern",
}
# Keywords with no effect on which instances are valid.
ANNOTATIONS = {
    "title", "description", "$schema", "$id", "id", "default", "examples", "$comment",
    "readOnly", "writeOnly", "deprecated", "$anchor",
}
_SCHEMA_MAPS = ("properties", "$defs", "definitions", "patternProperties", "dependentSchemas")
_SCHEMA_LISTS = ("anyOf", "oneOf", "allOf", "prefixItems")
_SCHEMA_ONE = ("items", "additionalProperties", "not", "if", "then", "else", "contains",
               "propertyNames", "additionalItems", "unevaluatedProperties", "unevaluatedItems")


def load(value: dict[str, Any] | str) -> dict[str, Any] | bool:
    """A schema from an inline dict, a JSON string, or a path to a ``.json`` file."""
    if isinstance(value, dict):
        return value
    text = value.strip()
    if not text.startswith("{"):
        path = Path(text).expanduser()
        if not path.exists():
            raise ValueError(f"json_schema: no such file {text!r} (give a path, a JSON string or a dict)")
        text = path.read_text()
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"json_schema: not valid JSON: line {e.lineno}, column {e.colno}: {e.msg}") from None


def check_valid(schema: Any) -> None:
    """Raise ValueError when ``schema`` is not a valid JSON Schema (when jsonschema is installed)."""
    try:
        import jsonschema
    except ImportError:  # pragma: no cover - jsonschema is a test dependency only
        return
    try:
        jsonschema.validators.validator_for(schema).check_schema(schema)
    except jsonschema.exceptions.SchemaError as e:
        where = "/".join(str(p) for p in e.absolute_path) or "<root>"
        raise ValueError(f"json_schema is not a valid JSON Schema at {where}: {e.message}") from None


def unsupported_keywords(schema: Any, allowed: set[str], where: str = "#") -> list[tuple[str, str]]:
    """Every ``(location, keyword)`` in ``schema`` outside ``allowed | ANNOTATIONS``."""
    found: list[tuple[str, str]] = []
    if not isinstance(schema, dict):
        return found
    for key, value in schema.items():
        if key not in allowed and key not in ANNOTATIONS:
            found.append((where, key))
        if key in _SCHEMA_MAPS and isinstance(value, dict):
            for name, sub in value.items():
                found += unsupported_keywords(sub, allowed, f"{where}/{key}/{name}")
        elif key in _SCHEMA_LISTS and isinstance(value, list):
            for k, sub in enumerate(value):
                found += unsupported_keywords(sub, allowed, f"{where}/{key}/{k}")
        elif key in _SCHEMA_ONE and isinstance(value, dict):
            found += unsupported_keywords(value, allowed, f"{where}/{key}")
    return found


def outlines_regex(schema: Any) -> str:
    """The outlines-core regex for ``schema``, after refusing keywords it would ignore."""
    from outlines_core.json_schema import build_regex_from_schema

    bad = unsupported_keywords(schema, OUTLINES_KEYWORDS)
    if bad:
        listed = ", ".join(f"{k!r} at {w}" for w, k in bad[:5])
        raise ValueError(f"json_schema: the outlines backend does not support {listed}; "
                         f"use backend: llguidance (the default) or remove the keyword")
    try:
        return build_regex_from_schema(json.dumps(schema), r"[ ]?")
    except Exception as e:
        raise ValueError(f"json_schema: outlines-core cannot compile it: {e}") from None


# -- sound rewrites for llguidance ------------------------------------------------------------------
#
# llguidance refuses ``oneOf`` (unless told to read it as ``anyOf``), ``dependencies`` and formats
# it does not know. Three rewrites widen coverage without ever admitting an invalid output:
#
# * ``oneOf`` is read as ``anyOf`` only when every ``oneOf`` in the schema has pairwise exclusive
#   branches (different types, disjoint ``const``/``enum`` values, or — when a branch or the schema
#   holding the ``oneOf`` admits objects only — a required property whose allowed constants differ /
#   which the other branch forbids): then "at least one" = "exactly one".
# * ``dependencies`` / ``dependentRequired`` / ``dependentSchemas``: a property ``a`` with a
#   dependency is forbidden (``properties[a] = false``) unless ``a`` is required, in which case a
#   dependency list becomes required too (to a fixpoint); a schema dependency on a required
#   property is refused. Outputs are a subset of the valid ones.
# * an unknown ``format`` is dropped: JSON Schema treats ``format`` as an annotation unless a
#   validator opts in, so the string stays valid under the schema as validated (formats
#   llguidance knows — date-time, email, uuid, ... — stay enforced).

_TYPE_OF = {bool: "boolean", int: "integer", float: "number", str: "string", type(None): "null",
            list: "array", dict: "object"}


def _pointer(root: Any, ref: str) -> Any:
    node = root
    for part in ref[2:].split("/") if ref.startswith("#/") else []:
        part = part.replace("~1", "/").replace("~0", "~")
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            return None
    return node if ref.startswith("#/") else (root if ref == "#" else None)


def _resolve(root: Any, node: Any, depth: int = 0) -> Any:
    while isinstance(node, dict) and isinstance(node.get("$ref"), str) and depth < 16:
        node, depth = _pointer(root, node["$ref"]), depth + 1
    return node


def _types(node: dict) -> set[str] | None:
    if "const" in node:
        return {_TYPE_OF.get(type(node["const"]), "?")}
    if isinstance(node.get("enum"), list):
        return {_TYPE_OF.get(type(v), "?") for v in node["enum"]}
    t = node.get("type")
    if isinstance(t, str):
        return {t}
    if isinstance(t, list):
        return set(t)
    return None


def _values(node: Any) -> list | None:
    if not isinstance(node, dict):
        return None
    if "const" in node:
        return [node["const"]]
    if isinstance(node.get("enum"), list):
        return list(node["enum"])
    return None


def _same(a: Any, b: Any) -> bool:
    return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True) and type(a) is type(b)


def _disjoint_values(a: list, b: list) -> bool:
    return not any(_same(x, y) for x in a for y in b)


def _forbids(node: dict, prop: str) -> bool:
    props = node.get("properties") or {}
    if props.get(prop) is False:
        return True
    return node.get("additionalProperties") is False and prop not in props and not node.get("patternProperties")


def _exclusive(root: Any, a: Any, b: Any, objects_only: bool = False) -> bool:
    """No instance is valid under both ``a`` and ``b`` (False when unsure). ``objects_only``:
    the schema holding the ``oneOf`` admits objects only."""
    a, b = _resolve(root, a), _resolve(root, b)
    if not isinstance(a, dict) or not isinstance(b, dict):
        return a is False or b is False
    ta, tb = _types(a), _types(b)
    if ta is not None and tb is not None:
        widen = lambda ts: ts | ({"number"} if "integer" in ts else set()) | ({"integer"} if "number" in ts else set())  # noqa: E731
        if not (widen(ta) & tb):
            return True
    va, vb = _values(a), _values(b)
    if va is not None and vb is not None and _disjoint_values(va, vb):
        return True
    # ``required`` / ``properties`` say nothing about non-objects: a string or an array is valid
    # under both branches unless one of them (or the schema holding the oneOf) admits objects only
    if not (objects_only or (ta is not None and ta <= {"object"}) or (tb is not None and tb <= {"object"})):
        return False
    ra, rb = set(a.get("required") or []), set(b.get("required") or [])
    for p in ra & rb:
        pa = _values(_resolve(root, (a.get("properties") or {}).get(p)))
        pb = _values(_resolve(root, (b.get("properties") or {}).get(p)))
        if pa is not None and pb is not None and _disjoint_values(pa, pb):
            return True
    return any(_forbids(b, p) for p in ra) or any(_forbids(a, p) for p in rb)


def _subschemas(node: dict):
    for key, value in node.items():
        if key in _SCHEMA_MAPS and isinstance(value, dict):
            yield from value.values()
        elif key in _SCHEMA_LISTS and isinstance(value, list):
            yield from value
        elif key in _SCHEMA_ONE and isinstance(value, dict):
            yield value
        elif key == "items" and isinstance(value, list):
            yield from value


def _rewrite_dependencies(node: dict, where: str) -> None:
    deps: dict[str, Any] = {}
    for key in ("dependencies", "dependentRequired", "dependentSchemas"):
        if isinstance(node.get(key), dict):
            deps.update(node.pop(key))
    if not deps:
        return
    required = list(node.get("required") or [])
    changed = True
    while changed:
        changed = False
        for a, dep in deps.items():
            if a not in required:
                continue
            if isinstance(dep, list):
                for d in dep:
                    if d not in required:
                        required.append(d)
                        changed = True
            elif dep not in (True, {}):
                raise ValueError(f"json_schema: a schema dependency on the required property {a!r} at {where} "
                                 f"is not supported")
    props = node.setdefault("properties", {})
    for a in deps:
        if a not in required:
            props[a] = False
    if required:
        node["required"] = required


def for_llguidance(schema: Any) -> tuple[Any, bool]:
    """``(rewritten copy, coerce_one_of)`` — see the comment above for why each step is sound."""
    import copy

    root = copy.deepcopy(schema)
    exclusive = [True]

    def walk(node: Any, where: str, seen: set[int]) -> None:
        if not isinstance(node, dict) or id(node) in seen:
            return
        seen.add(id(node))
        _rewrite_dependencies(node, where)
        branches = node.get("oneOf")
        if isinstance(branches, list):
            own = _types(node)
            objects_only = own is not None and own <= {"object"}
            for i in range(len(branches)):
                for j in range(i + 1, len(branches)):
                    if not _exclusive(root, branches[i], branches[j], objects_only):
                        exclusive[0] = False
        for k, sub in enumerate(_subschemas(node)):
            walk(sub, f"{where}/{k}", seen)

    walk(root, "#", set())
    return root, exclusive[0]


def strip_format(schema: Any, name: str) -> Any:
    """A copy of ``schema`` without ``"format": name`` anywhere."""
    if isinstance(schema, dict):
        return {k: strip_format(v, name) for k, v in schema.items() if not (k == "format" and v == name)}
    if isinstance(schema, list):
        return [strip_format(v, name) for v in schema]
    return schema
