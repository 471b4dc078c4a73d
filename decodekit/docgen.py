"""Generate docs/hooks.md from the hook specifications, so the reference cannot drift.

    python -m decodekit.docgen > docs/hooks.md
"""

from __future__ import annotations

import inspect
import sys

from decodekit import hookspecs


def hook_reference() -> str:
    lines = [
        "# Hook reference",
        "",
        "Generated from `decodekit/hookspecs.py` by `python -m decodekit.docgen > docs/hooks.md`;",
        "a test fails when this page and the specs disagree.",
        "",
        inspect.cleandoc(hookspecs.__doc__ or ""),
        "",
    ]
    for name in hookspecs.HOOK_NAMES:
        fn = getattr(hookspecs, name)
        opts = getattr(fn, f"{hookspecs.PROJECT}_spec", {}) or {}
        mode = "first non-None result wins" if opts.get("firstresult") else "called on every plugin"
        sig = str(inspect.signature(fn)).replace("'", "")
        lines += [
            f"## `{name}`",
            "",
            "```python",
            f"def {name}{sig}",
            "```",
            "",
            f"*{mode}*",
            "",
            inspect.cleandoc(fn.__doc__ or ""),
            "",
        ]
    return "\n".join(lines).rstrip() + "\n"


if __name__ == "__main__":  # pragma: no cover
    sys.stdout.write(hook_reference())
