"""The bad-input corpus (tests/data/bad_inputs.json) and the scratch files its cases refer to.

Shared by tests/unit/test_bad_inputs.py (parsers, no root) and
tests/kernel/test_bad_inputs_kernel.py (the real hooks in a namespace). A case names
`{tmp}/...` for files that cannot live in JSON: a directory, a FIFO, a symlink, a 2 MiB
config, state directories with unsafe modes. `Scratch` makes them once per test module.
"""

import json
import os
from pathlib import Path

DATA = Path(__file__).resolve().parent / "data" / "bad_inputs.json"


def load():
    """(base_config, cases, parser_only) from the JSON file."""
    with open(DATA, encoding="utf-8") as f:
        doc = json.load(f)
    return doc["base_config"], doc["cases"], doc["parser_only"]


BASE_CONFIG, CASES, PARSER_ONLY = load()


def ids(cases):
    return [c["id"] for c in cases]


def _encode(text):
    """TOML text to bytes; a lone surrogate (\\udcff) stands for an invalid UTF-8 byte."""
    return text.encode("utf-8", "surrogateescape")


class Scratch:
    """A directory holding every file the corpus refers to as {tmp}, plus one config per case."""

    def __init__(self, path):
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)
        self.base = self._config("base", BASE_CONFIG)
        (self.path / "adir").mkdir(exist_ok=True)
        fifo = self.path / "fifo"
        if not fifo.exists():
            os.mkfifo(fifo)
        link = self.path / "link.toml"
        if not link.is_symlink():
            link.symlink_to(self.base)
        (self.path / "huge.toml").write_bytes(b"# padding\n" * (1 << 18))  # 2.5 MiB
        real = self.path / "realstate"
        real.mkdir(mode=0o755, exist_ok=True)
        statelink = self.path / "statelink"
        if not statelink.is_symlink():
            statelink.symlink_to(real)
        opened = self.path / "openstate"
        opened.mkdir(exist_ok=True)
        opened.chmod(0o777)
        nobody = self.path / "nobodystate"
        nobody.mkdir(mode=0o755, exist_ok=True)
        if os.geteuid() == 0:
            os.chown(nobody, 65534, 65534)
        self.state = self.path / "state"

    def _config(self, name, text, mode=0o644, uid=None):
        path = self.path / "cases" / f"{name}.toml"
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(_encode(text))
        path.chmod(mode)
        if uid is not None:
            os.chown(path, uid, -1)
        return path

    def expand(self, value):
        return value.replace("{tmp}", str(self.path)) if isinstance(value, str) else value

    def prepare(self, case):
        """(argv, env) for *case*: its config written out, {tmp} expanded, VPNSPLIT_* defaults set."""
        if "config" in case or "config_mode" in case or "config_uid" in case:
            config = self._config(case["id"], case.get("config", BASE_CONFIG), int(case.get("config_mode", "0644"), 8), case.get("config_uid"))
        else:
            config = self.base
        env = {"VPNSPLIT_CONFIG": str(config), "VPNSPLIT_STATE_DIR": str(self.state)}
        env.update({k: self.expand(v) for k, v in case["env"].items()})
        return [self.expand(a) for a in case["argv"]], env
