"""``Pipeline``: a model, a decoding strategy and an ordered list of plugins, built from a file or
from Python with the same objects.

Example (a tiny random model, so it runs anywhere)::

    >>> from decodekit import Pipeline
    >>> from decodekit.testing import tiny_model, tiny_tokenizer
    >>> tok = tiny_tokenizer(); model = tiny_model("llama", tok)
    >>> pipe = Pipeline(model, tokenizer=tok, decoding={"max_new_tokens": 4})
    >>> len(pipe.generate("hello").token_ids)
    4
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Iterator

import pluggy
import torch

from decodekit import engine
from decodekit.attention import use_cpu_attention
from decodekit.config import PipelineConfig, Resolved, apply_overrides, read_file, validate
from decodekit.errors import ConfigError, DecodekitError
from decodekit.generation import Generation, Limits
from decodekit.hookspecs import PROJECT
from decodekit.hooks import HookRunner
from decodekit.models import DEFAULT_MODEL, load
from decodekit.onednn import pack_linears
from decodekit.streaming import TextStream
from decodekit.types import Completion, Result, Sequence

Prompt = Any  # str | list[dict] (chat messages) | list[int] (token ids)


def _plugin_entries(plugins: Any, source: str) -> list[Any]:
    """``plugins`` as a list of config entries (dicts, or names, which the config turns into
    entries) and plugin objects. Anything else is a ConfigError that says which item is wrong: a
    dict passed for the list would otherwise be iterated as its keys and do nothing."""
    if not isinstance(plugins, (list, tuple)):
        hint = ", e.g. [{'name': 'speculative', 'proposer': 'prompt_lookup'}]" if isinstance(plugins, dict) else ""
        raise ConfigError(f"{source}: plugins must be a list of entries {{'name': ..., **options}}, plugin "
                          f"names or plugin objects, not a {type(plugins).__name__}{hint}")
    for i, p in enumerate(plugins):
        if not _is_entry(p) and not _has_hookimpls(p):
            raise ConfigError(f"{source}: plugins[{i}]: a {type(p).__name__} is neither an entry "
                              "{'name': ..., **options}, a plugin name, nor an object with @hookimpl methods")
    return list(plugins)


def _is_entry(item: Any) -> bool:
    """Whether a ``plugins`` item is configuration (validated by the config) rather than an object."""
    return isinstance(item, (dict, str))


def _has_hookimpls(obj: Any) -> bool:
    """Whether pluggy, registering ``obj``, would find at least one ``@hookimpl`` on it (asked of
    pluggy itself, which looks attributes up statically: no property of ``obj`` runs)."""
    pm = pluggy.PluginManager(PROJECT)
    return any(pm.parse_hookimpl_opts(obj, attr) is not None for attr in dir(obj))


class Pipeline:
    """A ready-to-run decoding pipeline.

    * ``model``: an alias (``"smollm2-135m"``), a local HF directory, or a loaded
      ``PreTrainedModel`` (then pass ``tokenizer`` too).
    * ``decoding``: the decoding block (``strategy``, ``max_new_tokens``, ``seed``, ``stop`` and the
      strategy's own options such as ``temperature``).
    * ``plugins``: a list, in order, of entries ``{"name": ..., **options}``, plugin names
      (``"speculative"``: its default options), or plugin objects built by hand (any object with
      ``@hookimpl`` methods).
    """

    def __init__(self, model: Any = DEFAULT_MODEL, decoding: dict[str, Any] | None = None,
                 plugins: list[Any] | tuple[Any, ...] = (), *, tokenizer: Any = None,
                 device: str = "auto", dtype: str = "auto", cpu_kernels: str = "default", chat: bool = True,
                 source: str = "<python>"):
        plugins = _plugin_entries(plugins, source)
        entries = [p for p in plugins if _is_entry(p)]
        data = {
            "model": model if isinstance(model, str) else "<object>",
            "device": device, "dtype": dtype, "cpu_kernels": cpu_kernels, "chat": chat,
            "decoding": dict(decoding or {}), "plugins": entries,
        }
        self.source = source
        self.resolved: Resolved = validate(data, source)
        self.config: PipelineConfig = self.resolved.config
        if isinstance(model, (str, Path)):
            try:
                self.model, loaded_tok = load(str(model), device, dtype, cpu_kernels)
            except DecodekitError as e:
                raise type(e)(f"{source}: {e}") from None
            self.tokenizer = tokenizer or loaded_tok
        else:
            if tokenizer is None:
                raise ConfigError(f"{source}: a model object needs its tokenizer: Pipeline(model, tokenizer=...)")
            self.model, self.tokenizer = model, tokenizer
            if cpu_kernels == "onednn":
                try:
                    pack_linears(self.model)  # in place: the caller's model object runs through oneDNN from now on
                    use_cpu_attention(self.model)  # and the attention decodekit runs CPU models with (attention.py)
                except ConfigError as e:
                    raise ConfigError(f"{source}: {e}") from None
        self.device = next(self.model.parameters()).device
        built = iter(self._build(name, info, opts) for name, info, opts in self.resolved.plugins)
        self.plugins: list[tuple[str, object]] = []
        for p in plugins:
            if _is_entry(p):
                self.plugins.append(next(built))
            else:
                self.plugins.append((getattr(p, "name", type(p).__name__), p))

    def _build(self, name: str, info: Any, options: Any) -> tuple[str, object]:
        try:
            return name, info.factory(options, self)
        except ConfigError:
            raise
        except (ValueError, FileNotFoundError) as e:
            raise ConfigError(f"{self.source}: plugin {name!r}: {e}") from None

    @classmethod
    def from_config(cls, config: str | Path | dict[str, Any] | PipelineConfig,
                    overrides: list[str] | None = None, *, source: str | None = None,
                    **kwargs: Any) -> "Pipeline":
        """Build from a pipeline file (YAML/TOML/JSON) or a dict; ``overrides``: ``["key=value"]``."""
        if isinstance(config, PipelineConfig):
            data, source_default = config.model_dump(), "<config>"
        elif isinstance(config, dict):
            data, source_default = config, "<dict>"
        else:
            data, source_default = read_file(config), str(config)
        source = source or source_default
        if overrides:
            data = apply_overrides(data, overrides)
        validate(data, source)  # report errors against the file before loading a model
        cfg = PipelineConfig.model_validate(data)
        return cls(cfg.model, cfg.decoding.model_dump(), cfg.plugins, device=cfg.device, dtype=cfg.dtype,
                   cpu_kernels=cfg.cpu_kernels,
                   chat=cfg.chat, source=source, **kwargs)

    # -- prompts -------------------------------------------------------------------------------

    def encode(self, prompt: Prompt, raw: bool = False) -> list[int]:
        """Token ids for one prompt: text through the chat template (unless ``raw``), chat
        messages through the chat template, or token ids as they are."""
        tok = self.tokenizer
        if isinstance(prompt, list) and all(isinstance(x, int) for x in prompt):
            ids = list(prompt)
        elif isinstance(prompt, list) and all(isinstance(x, dict) for x in prompt):
            ids = self._chat(prompt)
        elif isinstance(prompt, str):
            use_chat = self.config.chat and not raw and getattr(tok, "chat_template", None)
            ids = self._chat([{"role": "user", "content": prompt}]) if use_chat else tok(prompt)["input_ids"]
        else:
            raise ConfigError(f"prompt must be a string, chat messages or token ids, got {type(prompt).__name__}")
        if not ids:
            raise ConfigError("prompt is empty: give at least one token")
        return ids

    def _chat(self, messages: list[dict[str, Any]]) -> list[int]:
        if not getattr(self.tokenizer, "chat_template", None):
            raise ConfigError("chat messages need a tokenizer with a chat template; pass raw text instead")
        text = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def _split(self, prompts: Any) -> tuple[list[Prompt], bool]:
        """(prompts, was_single): a single prompt or a list of prompts."""
        if isinstance(prompts, str):
            return [prompts], True
        if isinstance(prompts, list) and prompts and all(isinstance(x, int) for x in prompts):
            return [prompts], True
        if isinstance(prompts, list) and prompts and all(isinstance(x, dict) for x in prompts):
            return [prompts], True
        if isinstance(prompts, (list, tuple)) and prompts:
            return list(prompts), False
        raise ConfigError("no prompt given")

    # -- generation ----------------------------------------------------------------------------

    def _generation(self, prompts: Any, raw: bool, overrides: dict[str, Any]) -> tuple[Generation, int]:
        decoding = self.config.decoding
        strategy_info, strategy_options = self.resolved.strategy, self.resolved.strategy_options
        if overrides:
            merged = {**decoding.model_dump(), **overrides}
            res = validate({**self.config.model_dump(), "decoding": merged}, "overrides")
            decoding, strategy_info, strategy_options = res.config.decoding, res.strategy, res.strategy_options
        strategy = strategy_info.factory(strategy_options, self)
        hooks = HookRunner(self.plugins + [(f"strategy:{strategy_info.name}", strategy)])

        items, _ = self._split(prompts)
        ids = [self.encode(p, raw) for p in items]
        k = int(getattr(strategy, "rows_per_prompt", 1))
        rows = [list(p) for p in ids for _ in range(k)]
        gens = [torch.Generator(device=self.device).manual_seed(s) for s in self._seeds(decoding.seed, len(ids))
                for _ in range(k)]
        gen = Generation(
            model=self.model, tokenizer=self.tokenizer, hooks=hooks, tokens=rows,
            limits=Limits(decoding.max_new_tokens,
                          frozenset() if decoding.ignore_eos else self.eos_token_ids(),
                          tuple(decoding.stop)),
            generators=gens, rows_per_prompt=k,
        )
        gen.init_token_states([p for _, p in hooks.pm.list_name_plugin()])
        return gen, len(items)

    @staticmethod
    def _seeds(seed: int | list[int] | None, n_prompts: int) -> list[int]:
        """One seed per prompt: the call's seed for all, a list's own, or one fresh random seed."""
        if isinstance(seed, list):
            if len(seed) != n_prompts:
                raise ConfigError(f"decoding.seed: {len(seed)} seeds for {n_prompts} prompt(s); "
                                  "give one seed, or a list with one per prompt")
            return list(seed)
        if seed is None:
            seed = int(torch.randint(0, 2**62, ()).item())
        return [seed] * n_prompts

    def eos_token_ids(self) -> frozenset[int]:
        ids: set[int] = set()
        gc_eos = getattr(getattr(self.model, "generation_config", None), "eos_token_id", None)
        for e in (gc_eos if isinstance(gc_eos, list) else [gc_eos]):
            if e is not None:
                ids.add(int(e))
        if self.tokenizer.eos_token_id is not None:
            ids.add(int(self.tokenizer.eos_token_id))
        return frozenset(ids)

    @property
    def pad_token_id(self) -> int:
        tok = self.tokenizer
        for cand in (tok.pad_token_id, tok.eos_token_id):
            if cand is not None:
                return int(cand)
        return 0

    def _result(self, gen: Generation, n_prompts: int) -> Result:
        decode = lambda ids: self.tokenizer.decode(ids, skip_special_tokens=True)  # noqa: E731
        answers = [seqs for _, seqs in gen.hooks.each("finish", generation=gen) if seqs is not None]
        finished = answers[-1] if answers else None  # the strategy (last in order) wins
        completions = []
        for p in range(n_prompts):
            if finished is not None:
                seqs = [Sequence(s.token_ids, s.score, decode(s.token_ids)) for s in finished[p]]
                best = seqs[0]
                ended_eos = bool(best.token_ids) and best.token_ids[-1] in gen.limits.eos_token_ids
                reason = "eos" if ended_eos else "length"
                completions.append(Completion(best.text, best.token_ids, reason, seqs))
            else:
                row = p * gen.rows_per_prompt
                new = gen.new_tokens(row)
                completions.append(Completion(decode(new), new, gen.finish_reasons[row] or "length"))
        return Result(completions, gen.stats)

    def generate(self, prompts: Any, *, raw: bool = False,
                 on_text: Callable[[int, str], None] | None = None, **overrides: Any) -> Result:
        """Generate for one prompt or a list of prompts.

        ``overrides`` replace decoding fields for this call (``max_new_tokens=16``,
        ``temperature=0.5``, ``seed=1``). ``on_text(prompt_index, piece)`` receives text as it is
        produced (greedy/sample strategies: row ``i`` is prompt ``i``).
        """
        gen, n = self._generation(prompts, raw, overrides)
        streams = [TextStream(self.tokenizer) for _ in range(gen.num_rows)] if on_text else None
        for appended in engine.run(gen, self.pad_token_id):
            if streams is not None and gen.rows_per_prompt == 1:
                for b, toks in enumerate(appended):
                    if toks:
                        piece = streams[b].push(toks)
                        if piece:
                            on_text(b, piece)
        if streams is not None and gen.rows_per_prompt == 1:
            for b, s in enumerate(streams):
                piece = s.flush()
                if piece:
                    on_text(b, piece)
        return self._result(gen, n)

    def stream(self, prompt: Prompt, *, raw: bool = False, **overrides: Any) -> "Stream":
        """Iterate over text pieces of one prompt's completion; ``.result`` once exhausted."""
        return Stream(self, prompt, raw, overrides)


class Stream:
    """Iterator of text pieces; after the loop, ``result`` holds the full :class:`Result`."""

    def __init__(self, pipe: Pipeline, prompt: Prompt, raw: bool, overrides: dict[str, Any]):
        items, single = pipe._split(prompt)
        if not single:
            raise ConfigError("stream() takes one prompt; use generate(..., on_text=...) for a batch")
        self._pipe, self._prompt, self._raw, self._overrides = pipe, prompt, raw, overrides
        self.result: Result | None = None

    def __iter__(self) -> Iterator[str]:
        pipe = self._pipe
        gen, n = pipe._generation(self._prompt, self._raw, self._overrides)
        text = TextStream(pipe.tokenizer)
        for appended in engine.run(gen, pipe.pad_token_id):
            piece = text.push(appended[0]) if appended[0] else ""
            if piece:
                yield piece
        tail = text.flush()
        if tail:
            yield tail
        self.result = pipe._result(gen, n)
