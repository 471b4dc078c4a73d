"""Assemble docs/benchmarks.md from the per-benchmark results in docs/results/.

Each script in benchmarks/ writes its own docs/results/<name>.md (with the machine it ran on);
this puts them on one page in a fixed order.

    python benchmarks/collect.py
"""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ORDER = ["overhead", "cpu_kernels", "reductions", "attention", "speculative", "lookup_replay", "grammar", "guidance", "diverse_beam", "momentum", "alignment", "composition"]

HEADER = """# Benchmark results

Every figure on this page comes from a script in `benchmarks/` that anyone can rerun; each section
names its script, the machine it ran on, and compares methods side by side in one process (ratios
against a baseline measured in the same run). Regenerate this page with
`python benchmarks/collect.py` after running the scripts.
"""


def _as_section(text: str) -> str:
    """One page's markdown as a section: headings one level down, relative links into results/."""
    if text.startswith("# "):
        text = re.sub(r"^(#+) ", lambda m: "#" + m.group(1) + " ", text, flags=re.M)
    return re.sub(r"\]\((?!https?:|/|#|results/)([^)]+)\)", r"](results/\1)", text)


def main() -> None:
    results = ROOT / "docs" / "results"
    files = {p.stem: p for p in results.glob("*.md")}
    # each benchmark's CPU page, its CPU pages with oneDNN kernels (<name>_onednn, on one thread
    # and on two, then in bfloat16), a bfloat16 page (<name>_bf16), then its GPU page (<name>_cuda),
    # for those recorded
    variants = ("", "_onednn", "_onednn_2threads", "_onednn_bf16", "_bf16", "_cuda")
    ordered = [n + v for n in ORDER for v in variants]
    names = [n for n in ordered if n in files] + sorted(n for n in files if n not in ordered)
    parts = [HEADER]
    for n in names:
        parts.append(_as_section(files[n].read_text().strip()) + "\n")
    (ROOT / "docs" / "benchmarks.md").write_text("\n".join(parts))
    print(f"docs/benchmarks.md: {', '.join(names)}")


if __name__ == "__main__":
    main()
