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
#
# * under drafts 3 to 7 (by ``$schema``), a ``$ref`` makes the other keywords beside it ignored (the
#   spec says so, and jsonschema validates that way); they are dropped, which is exact there.
#   llguidance would otherwise apply them and refuses some (a recursive ``$ref`` with siblings).
#
# Keywords llguidance does not implement become *approximations*: a stricter schema, so every
# output is valid under the original, though some valid documents can no longer be produced.
# A form not listed here stays refused with llguidance's error.
#
# * ``{"not": {}}`` (or ``not: true``) is the schema ``false``.
# * ``not`` of ``required`` lists (``{"required": R}``, ``allOf`` / ``anyOf`` of them, or
#   ``properties`` holding only ``true`` schemas beside ``required``): "not all of R present" is
#   met by leaving out one name of R that the schema does not require itself
#   (``properties[name] = false``; for ``anyOf``, one name per branch). ``not(required ...)``
#   fails every non-object, so the type becomes ``object``.
# * ``not: {"type": T}``: the other types (``integer`` in T removes ``number`` too, since
#   "a number but not an integer" has no schema llguidance takes).
# * ``uniqueItems: true``: at most one item (``maxItems: 1``); refused when ``minItems`` > 1.
# * ``if: P, then: Q, else: E``: ``allOf: [P, Q]`` — an instance valid under P and Q takes the
#   ``then`` branch and satisfies it (without ``then``: P alone).
# * ``propertyNames: S``: declared properties whose names S rejects are left out (refused when
#   one is required) and ``additionalProperties`` becomes ``false`` (refused with
#   ``patternProperties``, whose names S would have to be checked against).

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


def _slots(node: dict):
    """``(keyword, container, key)`` for every subschema of ``node``: ``container[key]`` is it."""
    for keyword, value in node.items():
        if keyword in _SCHEMA_MAPS and isinstance(value, dict):
            yield from ((keyword, value, name) for name in value)
        elif (keyword in _SCHEMA_LISTS or keyword == "items") and isinstance(value, list):
            yield from ((keyword, value, k) for k in range(len(value)))
        elif keyword in _SCHEMA_ONE and isinstance(value, dict):
            yield keyword, node, keyword


def _subschemas(node: dict):
    for _, container, key in _slots(node):
        yield container[key]


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


# kept beside a ``$ref`` under drafts 3-7: what other references or the validator choice need
_REF_KEEPS = {"$ref", "definitions", "$defs", "$schema", "$id", "id"}


def ref_ignores_siblings(root: Any) -> bool:
    """Whether ``root``'s ``$schema`` is draft 3, 4, 6 or 7, where keywords beside ``$ref`` are ignored."""
    declared = root.get("$schema") if isinstance(root, dict) else None
    return isinstance(declared, str) and any(f"draft-0{n}/" in declared for n in (3, 4, 6, 7))


def _drop_ref_siblings(node: dict) -> None:
    if "$ref" in node:
        for key in [k for k in node if k not in _REF_KEEPS and k not in ANNOTATIONS]:
            del node[key]


ALL_TYPES = ("array", "boolean", "integer", "null", "number", "object", "string")


def _is_false(node: Any) -> bool:
    """``node`` is ``{"not": {}}`` or ``{"not": true}`` (annotations aside): no instance is valid."""
    return (isinstance(node, dict) and node.get("not") in ({}, True)
            and all(k == "not" or k in ANNOTATIONS for k in node))


def _falsify(node: Any) -> Any:
    """``node`` with every subschema that is :func:`_is_false` replaced by ``False`` (schema
    positions only; not inside a ``not``)."""
    if _is_false(node):
        return False
    if isinstance(node, dict):
        for keyword, container, key in list(_slots(node)):
            if keyword != "not":
                container[key] = _falsify(container[key])
    return node


def _required_sets(neg: Any) -> list[list[str]] | None:
    """For ``not: neg``, the name lists of which at least one name each must be left out, or None
    when ``neg`` is not a form of required lists (see the comment above)."""
    if not isinstance(neg, dict):
        return None
    keys = set(neg) - ANNOTATIONS
    if keys == {"required"} or keys == {"required", "properties"}:
        req = neg.get("required")
        props = neg.get("properties") or {}
        if not isinstance(req, list) or any(v not in ({}, True) for v in props.values()):
            return None
        return [list(req)]
    if keys == {"allOf"} and isinstance(neg["allOf"], list):
        names: list[str] = []
        for sub in neg["allOf"]:
            inner = _required_sets(sub)
            if inner is None or len(inner) != 1:
                return None
            names += inner[0]
        return [names]
    if keys == {"anyOf"} and isinstance(neg["anyOf"], list):
        out: list[list[str]] = []
        for sub in neg["anyOf"]:
            inner = _required_sets(sub)
            if inner is None or len(inner) != 1:
                return None
            out += inner
        return out
    return None


def _restrict_types(node: dict, allowed: set[str]) -> bool:
    """Intersect ``node``'s ``type`` with ``allowed``; False when nothing is left."""
    own = node.get("type")
    have = {own} if isinstance(own, str) else set(own) if isinstance(own, list) else set(ALL_TYPES)
    if "number" in have:
        have.add("integer")
    keep = sorted(have & allowed)
    if "number" in keep and "integer" in keep:
        keep.remove("integer")
    if not keep:
        return False
    node["type"] = keep[0] if len(keep) == 1 else keep
    return True


def _rewrite_not(node: dict, where: str) -> None:
    if "not" not in node:
        return
    neg = node["not"]
    sets = _required_sets(neg)
    if sets is not None:
        required = set(node.get("required") or [])
        props = node.setdefault("properties", {})
        for names in sets:
            free = [n for n in names if n not in required]
            if not free:
                raise ValueError(f"json_schema: the 'not' at {where} cannot hold: the schema itself requires "
                                 f"every name in its required list")
            if not any(props.get(n) is False for n in names):
                props[free[0]] = False
        if not _restrict_types(node, {"object"}):
            raise ValueError(f"json_schema: the 'not' at {where} leaves no type")
        del node["not"]
        return
    if isinstance(neg, dict) and set(neg) - ANNOTATIONS == {"type"}:
        t = neg["type"]
        banned = {t} if isinstance(t, str) else set(t) if isinstance(t, list) else None
        if banned is None:
            return
        if "integer" in banned:
            banned.add("number")  # "not an integer" would keep 1.5 but not 1: no such schema here
        if "number" in banned:
            banned.add("integer")
        if not _restrict_types(node, set(ALL_TYPES) - banned):
            raise ValueError(f"json_schema: the 'not' at {where} leaves no type")
        del node["not"]


def _rewrite_unique_items(node: dict, where: str) -> None:
    if "uniqueItems" not in node:
        return
    if node["uniqueItems"] is True:
        if isinstance(node.get("minItems"), int) and node["minItems"] > 1:
            return  # at least two distinct items: left to llguidance, which refuses the keyword
        node["maxItems"] = min(1, node.get("maxItems", 1)) if isinstance(node.get("maxItems"), int) else 1
    del node["uniqueItems"]


def _rewrite_if(node: dict) -> None:
    if "if" not in node:
        node.pop("then", None)
        node.pop("else", None)
        return
    cond, then = node.pop("if"), node.pop("then", True)
    node.pop("else", None)
    node["allOf"] = list(node.get("allOf") or []) + [cond] + ([then] if then is not True else [])


def _rewrite_property_names(node: dict, where: str, root: Any) -> None:
    if "propertyNames" not in node:
        return
    rule = _resolve(root, node["propertyNames"])
    if rule is True or rule == {}:
        del node["propertyNames"]
        return
    if node.get("patternProperties") or (isinstance(rule, dict) and "$ref" in json.dumps(rule)):
        return  # left to llguidance, which refuses the keyword
    import jsonschema

    check = jsonschema.validators.validator_for(root)(rule if isinstance(rule, (dict, bool)) else {})
    required = set(node.get("required") or [])
    props = node.setdefault("properties", {})
    for name in list(props):
        if not check.is_valid(name):
            if name in required:
                raise ValueError(f"json_schema: the required property {name!r} at {where} fails its propertyNames")
            props[name] = False
    for name in required - set(props):
        if not check.is_valid(name):
            raise ValueError(f"json_schema: the required property {name!r} at {where} fails its propertyNames")
    node["additionalProperties"] = False
    del node["propertyNames"]


def for_llguidance(schema: Any) -> tuple[Any, bool]:
    """``(rewritten copy, coerce_one_of)`` — see the comment above for why each step is sound."""
    import copy

    root = copy.deepcopy(schema)
    drop_siblings = ref_ignores_siblings(root)
    root = _falsify(root)
    exclusive = [True]

    def walk(node: Any, where: str, seen: set[int]) -> None:
        if not isinstance(node, dict) or id(node) in seen:
            return
        seen.add(id(node))
        if drop_siblings:
            _drop_ref_siblings(node)
        _rewrite_dependencies(node, where)
        _rewrite_not(node, where)
        _rewrite_unique_items(node, where)
        _rewrite_if(node)
        _rewrite_property_names(node, where, root)
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
