"""The distribution registers ``momentum`` through its entry point; ``decodekit plugins`` lists it."""

import json
import subprocess
import sys

from decodekit.plugins import get_registry


def test_decodekit_plugins_lists_momentum():
    out = subprocess.run([sys.executable, "-m", "decodekit.cli", "plugins", "--json"],
                         capture_output=True, text=True, check=True).stdout
    rows = {r["name"]: r for r in json.loads(out)["plugins"]}
    assert "momentum" in rows


def test_registry_entry():
    info = get_registry(refresh=True).plugins["momentum"]
    assert info.kind == "plugin"
    assert info.distribution == "decodekit-momentum"
    assert {"rescore", "start"} <= set(info.hooks)
