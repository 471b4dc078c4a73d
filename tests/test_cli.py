"""The decodekit command, end to end in subprocesses (a tiny model saved to a local directory)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest


def decodekit(*args: str, input: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "decodekit", *args], capture_output=True, text=True,
                          input=input, timeout=300)


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory, llama, tok):
    path = tmp_path_factory.mktemp("tiny") / "model"
    llama.save_pretrained(path)
    tok.save_pretrained(path)
    return path


@pytest.fixture
def pipeline_file(tmp_path, tiny_dir):
    path = tmp_path / "p.yaml"
    path.write_text(f"model: {tiny_dir}\ndecoding: {{strategy: greedy, max_new_tokens: 10}}\n")
    return path


def test_run_json(pipeline_file):
    out = decodekit("run", str(pipeline_file), "--prompt", "hello", "--json")
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    assert set(data) >= {"text", "token_ids", "stats"}
    assert data["stats"]["new_tokens"] == len(data["token_ids"]) <= 10


def test_run_streams_text_and_set_overrides(pipeline_file):
    plain = json.loads(decodekit("run", str(pipeline_file), "--prompt", "hello", "--json",
                                 "--set", "decoding.max_new_tokens=4", "--set", "decoding.ignore_eos=true").stdout)
    assert len(plain["token_ids"]) == 4
    out = decodekit("run", str(pipeline_file), "--prompt", "hello", "--set", "decoding.max_new_tokens=4",
                    "--set", "decoding.ignore_eos=true")
    assert out.returncode == 0
    assert out.stdout.rstrip("\n") == plain["text"]
    assert "tok/s" in out.stderr


def test_prompt_from_file_and_stdin(pipeline_file, tmp_path):
    f = tmp_path / "prompt.txt"
    f.write_text("hello")
    a = json.loads(decodekit("run", str(pipeline_file), "--prompt-file", str(f), "--json").stdout)
    b = json.loads(decodekit("run", str(pipeline_file), "--json", input="hello").stdout)
    c = json.loads(decodekit("run", str(pipeline_file), "--prompt", "hello", "--json").stdout)
    assert a["token_ids"] == b["token_ids"] == c["token_ids"]


def test_validate_and_plugins():
    out = decodekit("validate", "examples/pipelines/chat.yaml")
    assert out.returncode == 0 and "ok" in out.stdout
    listing = json.loads(decodekit("plugins", "--json").stdout)
    names = {p["name"] for p in listing["plugins"]}
    assert {"greedy", "sample"} <= names
    assert any(m["alias"] == "smollm2-135m" for m in listing["models"])
    text = decodekit("plugins").stdout
    assert "greedy" in text and "strategy" in text


@pytest.mark.parametrize("content,args,message", [
    (None, ["run", "/no/such.yaml", "--prompt", "x"], "no such pipeline file"),
    ("model: [x\n", ["run", "{f}", "--prompt", "x"], "invalid YAML at line 2"),
    ("plugins: [{name: nope}]\n", ["validate", "{f}"], "unknown plugin 'nope'"),
    ("decoding: {strategy: sample, top_q: 1}\n", ["validate", "{f}"], "top_q: unknown option; did you mean 'top_p'"),
    ("model: /no/such/model\n", ["run", "{f}", "--prompt", "x"], "model '/no/such/model'"),
    ("decoding: {max_new_tokens: 4}\n", ["run", "{f}", "--prompt-file", "/no/prompt.txt"], "no such prompt file"),
])
def test_bad_input_exits_2_with_one_line(tmp_path, content, args, message):
    f = tmp_path / "p.yaml"
    if content is not None:
        f.write_text(content)
    out = decodekit(*[a.replace("{f}", str(f)) for a in args])
    assert out.returncode == 2
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("decodekit: error:") and message in lines[0], out.stderr
    assert "Traceback" not in out.stderr


def test_bad_set_override(pipeline_file):
    out = decodekit("validate", str(pipeline_file), "--set", "decoding.max_new_tokens")
    assert out.returncode == 2 and "expected key=value" in out.stderr
