"""One constraint per plugin entry: resolve the option to a source text, compile it to an Automaton."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from decodekit_grammar import schema as schemas
from decodekit_grammar.backends.base import Automaton
from decodekit_grammar.vocab import TokenVocab

BACKENDS = ("llguidance", "outlines")
_META = set("\\.+*?()|[]{}^$")


def escape(text: str) -> str:
    """A regex matching ``text`` literally (Rust regex syntax: escape only metacharacters)."""
    return "".join("\\" + c if c in _META else c for c in text)


def grammar_dirs() -> list[Path]:
    """Where ``lark: <name>`` is looked up: ``$DECODEKIT_GRAMMARS``, the repository's ``grammars/``, ``./grammars``."""
    dirs = []
    if os.environ.get("DECODEKIT_GRAMMARS"):
        dirs.append(Path(os.environ["DECODEKIT_GRAMMARS"]))
    dirs.append(Path(__file__).resolve().parents[3] / "grammars")
    dirs.append(Path.cwd() / "grammars")
    return dirs


def lark_source(value: str) -> tuple[str, str]:
    """``(grammar text, description)`` for a name in ``grammars/``, a path, or inline text."""
    if "\n" in value or ":" in value and not value.endswith(".lark"):
        return value, "lark grammar <inline>"
    path = Path(value).expanduser()
    if path.exists():
        return path.read_text(), f"lark grammar {str(path)!r}"
    for d in grammar_dirs():
        cand = d / (value if value.endswith(".lark") else f"{value}.lark")
        if cand.exists():
            return cand.read_text(), f"lark grammar {cand.stem!r}"
    names = sorted({p.stem for d in grammar_dirs() if d.is_dir() for p in d.glob("*.lark")})
    raise ValueError(f"lark: no grammar named {value!r} (shipped: {', '.join(names) or 'none'}; "
                     f"or give a path or inline grammar text)")


_SKIP = r'"(?:[^"\\\n]|\\.)*"|/(?:[^/\\\n]|\\.)+/[imslux]*'


def with_start(text: str, start: str) -> str:
    """llguidance always starts at ``start``: rename a user rule ``start`` and point it at ``start``."""
    if start == "start":
        return text
    if not re.search(rf"^\s*[?!]?{re.escape(start)}\b", text, re.M):
        raise ValueError(f"start: the grammar has no rule {start!r}")
    # rename the identifier `start` outside string and regex literals
    pattern = re.compile(rf"({_SKIP})|\bstart\b")
    renamed = pattern.sub(lambda m: m.group(1) or "start__user", text)
    return f"start: {start}\n{renamed}"


@dataclass
class Constraint:
    kind: str         # regex | choice | json_schema | lark
    source: Any       # the regex, the schema dict, or the lark text (start rule applied)
    description: str  # names the constraint in every error message

    @classmethod
    def from_options(cls, options: Any) -> "Constraint":
        given = [k for k in ("regex", "choice", "json_schema", "lark") if getattr(options, k) is not None]
        if len(given) != 1:
            raise ValueError(f"give exactly one of regex, choice, json_schema, lark (got {given or 'none'})")
        kind = given[0]
        value = getattr(options, kind)
        if kind == "regex":
            return cls("regex", value, f"regex {value!r}")
        if kind == "choice":
            if not value or any(not isinstance(c, str) or c == "" for c in value):
                raise ValueError("choice: give a non-empty list of non-empty strings")
            return cls("regex", "(?:" + "|".join(escape(c) for c in value) + ")", f"choice {value!r}")
        if kind == "json_schema":
            schema = schemas.load(value)
            schemas.check_valid(schema)
            return cls("json_schema", schema, "json_schema" + (f" {value!r}" if isinstance(value, str) else ""))
        text, desc = lark_source(value)
        return cls("lark", with_start(text, options.start), desc)

    def auto_backend(self, vocab: TokenVocab) -> str:
        """The engine ``backend: auto`` tries first: outlines-core for a regex or choice whose
        states allow many tokens and whose index stays small (``outlines.auto_prefers``: its
        precomputed masks cost the same for any regex, where llguidance's walk grows with the
        tokens allowed), llguidance for everything else (JSON Schema and lark included: it
        compiles in milliseconds and covers more)."""
        if self.kind == "regex":
            from decodekit_grammar.backends.outlines import auto_prefers

            if auto_prefers(self.source, vocab):
                return "outlines"
        return "llguidance"

    def compile(self, vocab: TokenVocab, backend: str, cache_root: Path | None) -> Automaton:
        if backend == "auto":
            if self.auto_backend(vocab) == "outlines":
                try:
                    return self.compile(vocab, "outlines", cache_root)
                except ValueError:  # e.g. a regex this vocabulary cannot spell: llguidance decides
                    pass
            backend = "llguidance"
        if backend == "outlines":
            from decodekit_grammar.backends.outlines import OutlinesAutomaton

            if self.kind == "lark":
                raise ValueError(f"{self.description}: the outlines backend compiles regex, choice and "
                                 f"json_schema only; use backend: llguidance for lark grammars")
            regex = schemas.outlines_regex(self.source) if self.kind == "json_schema" else self.source
            return OutlinesAutomaton(regex, vocab, self.description, cache_root)
        from decodekit_grammar.backends import llg

        if self.kind == "regex":
            grammar = llg.regex_grammar(self.source)
        elif self.kind == "json_schema":
            return self._llguidance_json(vocab)
        else:
            grammar = llg.lark_grammar(self.source)
        return llg.LLGuidanceAutomaton(grammar, vocab, self.description)

    def _llguidance_json(self, vocab: TokenVocab) -> Automaton:
        """Compile with the sound rewrites of :func:`schema.for_llguidance`; drop unknown formats."""
        from decodekit_grammar.backends import llg

        schema, coerce = schemas.for_llguidance(self.source)
        dropped: list[str] = []
        while True:
            try:
                return llg.LLGuidanceAutomaton(llg.json_grammar(schema, coerce), vocab, self.description)
            except ValueError as e:
                unknown = re.search(r"Unknown format: (.+)$", str(e).splitlines()[0])
                if unknown and unknown.group(1) not in dropped and len(dropped) < 32:
                    dropped.append(unknown.group(1))
                    schema = schemas.strip_format(schema, unknown.group(1))
                    continue
                if "oneOf" in str(e):
                    raise ValueError(f"{self.description}: a oneOf has branches that may overlap; reading it "
                                     f"as anyOf could produce outputs that match several branches (invalid "
                                     f"under oneOf), so it is refused") from None
                raise
