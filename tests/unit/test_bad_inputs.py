"""The bad-input corpus against the parsers, without root (issue 4, "Hostile and broken input").

Each case of tests/data/bad_inputs.json goes through the same pure steps a hook takes
before it touches the kernel (parse the call, load the config, pick the tunnel, check the
state directory and lock timeout, plan) and must stop with an InputError whose message
is one line and names the bad value. Cases marked needs_kernel are refused only once the
kernel is read; tests/kernel/test_bad_inputs_kernel.py runs those (and all the others)
through the real hooks. The parser_only cases hold a NUL, which execve cannot pass.
"""

import os

import pytest

from tests import corpus
from vpnsplit import config, hooks, plan
from vpnsplit.errors import InputError

PURE = [c for c in corpus.CASES if not c.get("needs_kernel")]


@pytest.fixture(scope="module")
def scratch(tmp_path_factory):
    return corpus.Scratch(tmp_path_factory.mktemp("corpus"))


def run_pure(argv, env, hook):
    """What a hook does before its first kernel call; raises InputError for bad input."""
    if hook == "cli":
        words = list(argv)
        explicit = None
        if words[:1] == ["--config"]:
            explicit, words = words[1], words[2:]
        assert words[0] == "up"
        cfg = config.load(config.path_from(explicit, env), check_owner=os.geteuid() == 0)
        cfg.tunnel(words[1], "vpnsplit up")
        return
    call = hooks.validate(hook, argv, env)
    if call.lease is not None:
        plan.plan_up(call.tunnel, call.lease)


def _needs_root(case):
    return "config_uid" in case or "nobodystate" in str(case["env"]) or (
        "config_mode" in case and os.geteuid() != 0  # as non-root, every file fails the owner check anyway
    )


@pytest.mark.parametrize("case", PURE, ids=corpus.ids(PURE))
def test_parsers_refuse_bad_input_naming_the_value(scratch, case):
    if _needs_root(case) and os.geteuid() != 0:
        pytest.skip("needs root to give a file to another owner")
    argv, env = scratch.prepare(case)
    with pytest.raises(InputError) as e:
        run_pure(argv, env, case["hook"])
    message = str(e.value)
    assert case["expect"] in message
    assert len(message.splitlines()) == 1, message


@pytest.mark.parametrize("case", corpus.PARSER_ONLY, ids=corpus.ids(corpus.PARSER_ONLY))
def test_nul_bytes_are_refused_by_the_parsers(scratch, case):
    argv, env = scratch.prepare(case)
    with pytest.raises(InputError) as e:
        run_pure(argv, env, case["hook"])
    assert case["expect"] in str(e.value) and len(str(e.value).splitlines()) == 1


def test_corpus_is_large_and_well_formed():
    cases = corpus.CASES + corpus.PARSER_ONLY
    assert len(corpus.CASES) >= 100
    assert len(set(corpus.ids(cases))) == len(cases), "duplicate ids"
    for c in cases:
        assert c["hook"] in ("up", "wg-up", "cli") and c["expect"], c["id"]


def test_a_good_call_passes_the_same_pipeline(scratch):
    """The corpus runner itself is sound: the base config and a proper call give no error."""
    argv = ["tun0", "1500", "0", "10.8.0.2", "255.255.255.0", "init"]
    env = {"dev": "tun0", "ifconfig_local": "10.8.0.2", "ifconfig_netmask": "255.255.255.0",
           "VPNSPLIT_CONFIG": str(scratch.base), "VPNSPLIT_STATE_DIR": str(scratch.state)}
    run_pure(argv, env, "up")
    run_pure(["wg0"], env, "wg-up")
