"""Meta-tests that keep the docs honest: every hook documented with its exact signature and tested."""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

from decodekit import hookspecs
from decodekit.docgen import hook_reference

ROOT = Path(__file__).resolve().parents[1]


def test_hook_reference_is_generated_from_the_specs():
    assert (ROOT / "docs" / "hooks.md").read_text() == hook_reference(), (
        "docs/hooks.md is stale: run `python -m decodekit.docgen > docs/hooks.md`"
    )


def test_every_hook_is_documented_with_its_signature():
    text = (ROOT / "docs" / "hooks.md").read_text()
    for name in hookspecs.HOOK_NAMES:
        fn = getattr(hookspecs, name)
        sig = str(inspect.signature(fn)).replace("'", "")
        assert f"def {name}{sig}" in text, name
        assert len(inspect.cleandoc(fn.__doc__ or "")) > 200, f"hook {name} needs a full docstring"


def test_every_hook_has_a_test():
    tree = ast.parse((ROOT / "tests" / "test_hooks.py").read_text())
    tests = {node.name for node in ast.walk(tree) if isinstance(node, ast.FunctionDef)}
    missing = [n for n in hookspecs.HOOK_NAMES if f"test_hook_{n}" not in tests]
    assert not missing, f"hooks without a test_hook_<name> in tests/test_hooks.py: {missing}"


def test_every_hookspec_is_listed():
    specs = {n for n, v in vars(hookspecs).items()
             if callable(v) and getattr(v, f"{hookspecs.PROJECT}_spec", None) is not None}
    assert specs == set(hookspecs.HOOK_NAMES)


def test_readme_has_the_two_setup_commands_and_ci_calls_the_test_one():
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    assert "scripts/setup-and-run.sh" in readme and "scripts/setup-and-test.sh" in readme
    assert "scripts/setup-and-test.sh" in ci
