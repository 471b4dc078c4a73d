"""The ``decodekit`` command: run, validate and inspect pipelines.

    decodekit run PIPELINE [--prompt TEXT | --prompt-file FILE] [--raw] [--set key=value ...] [--json]
    decodekit validate PIPELINE [--set key=value ...]
    decodekit plugins [--json]

Bad input (a missing file, bad YAML, an unknown plugin or option, a missing model) exits with
status 2 and one line on stderr.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from decodekit.errors import DecodekitError

EXIT_USAGE = 2


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="decodekit", description="Composable, exact LLM decoding pipelines.")
    sub = p.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run a pipeline on a prompt, streaming the text")
    run.add_argument("pipeline", help="pipeline file (.yaml, .yml, .toml, .json)")
    src = run.add_mutually_exclusive_group()
    src.add_argument("--prompt", help="the prompt text")
    src.add_argument("--prompt-file", help="read the prompt from this file ('-' for stdin)")
    run.add_argument("--raw", action="store_true", help="feed the prompt as is, without the chat template")
    run.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                     help="override a pipeline field, e.g. decoding.max_new_tokens=32 (repeatable)")
    run.add_argument("--json", action="store_true", help="print one JSON object: text, token_ids, stats")

    val = sub.add_parser("validate", help="check a pipeline file without loading a model")
    val.add_argument("pipeline")
    val.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE")

    plugins = sub.add_parser("plugins", help="list registered plugins, strategies, models and rewards")
    plugins.add_argument("--json", action="store_true")
    return p


def _read_prompt(args: argparse.Namespace) -> str:
    if args.prompt is not None:
        return args.prompt
    if args.prompt_file is not None:
        if args.prompt_file == "-":
            return sys.stdin.read()
        path = Path(args.prompt_file)
        if not path.is_file():
            raise DecodekitError(f"{args.prompt_file}: no such prompt file")
        return path.read_text(encoding="utf-8")
    if not sys.stdin.isatty():
        return sys.stdin.read()
    raise DecodekitError("no prompt: give --prompt TEXT, --prompt-file FILE, or pipe it on stdin")


def cmd_validate(args: argparse.Namespace) -> int:
    from decodekit.config import apply_overrides, read_file, validate

    data = apply_overrides(read_file(args.pipeline), args.sets)
    res = validate(data, args.pipeline)
    names = ", ".join(n for n, _, _ in res.plugins) or "no plugins"
    print(f"{args.pipeline}: ok (model {res.config.model}, strategy {res.strategy.name}, {names})")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from decodekit.config import apply_overrides, read_file, validate

    data = apply_overrides(read_file(args.pipeline), args.sets)
    validate(data, args.pipeline)  # fail fast, before a model loads
    prompt = _read_prompt(args)

    from decodekit.pipeline import Pipeline

    pipe = Pipeline.from_config(data, source=args.pipeline)
    if args.json:
        result = pipe.generate(prompt, raw=args.raw)
        out: dict[str, Any] = result.as_dict()
        print(json.dumps(out, ensure_ascii=False))
        return 0
    stream = pipe.stream(prompt, raw=args.raw)
    for piece in stream:
        sys.stdout.write(piece)
        sys.stdout.flush()
    sys.stdout.write("\n")
    result = stream.result
    if result is not None and len(result.completions[0].sequences) > 1:
        for k, seq in enumerate(result.completions[0].sequences[1:], start=2):
            print(f"--- sequence {k} (score {seq.score:.4f})\n{seq.text}")
    if result is not None:
        s = result.stats
        print(f"[{s.new_tokens} tokens, {s.tokens_per_s:.1f} tok/s, {s.target_passes} target passes, "
              f"{s.mean_tokens_per_pass:.2f} tokens/pass, {result.completions[0].finish_reason}]", file=sys.stderr)
    return 0


def cmd_plugins(args: argparse.Namespace) -> int:
    from decodekit.plugins import get_registry

    reg = get_registry()
    rows = [
        {"name": i.name, "kind": i.kind, "distribution": i.distribution, "version": i.version,
         "hooks": i.hooks, "description": i.description}
        for i in sorted(reg.plugins.values(), key=lambda i: (i.kind != "strategy", i.name))
    ]
    models = [{"alias": m.alias, "description": m.description} for m in reg.models.values()]
    rewards = [{"name": r.name, "distribution": r.distribution, "description": r.description}
               for r in reg.rewards.values()]
    if args.json:
        print(json.dumps({"plugins": rows, "models": models, "rewards": rewards}, indent=2))
        return 0
    width = max((len(r["name"]) for r in rows), default=4)
    for r in rows:
        hooks = ",".join(r["hooks"]) or "-"
        print(f"{r['name']:<{width}}  {r['kind']:<8}  {r['distribution']} {r['version']}  [{hooks}]  {r['description']}")
    for m in models:
        print(f"{m['alias']:<{width}}  {'model':<8}  {m['description']}")
    for r in rewards:
        print(f"{r['name']:<{width}}  {'reward':<8}  {r['distribution']}  {r['description']}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    handlers = {"run": cmd_run, "validate": cmd_validate, "plugins": cmd_plugins}
    try:
        return handlers[args.command](args)
    except DecodekitError as e:
        print(f"decodekit: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("decodekit: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
