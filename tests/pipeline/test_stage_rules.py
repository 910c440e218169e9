"""Rule files for the patterns and route stages: parse errors name file, rule and field;
a live reload applies good edits and refuses broken ones."""

from __future__ import annotations

import asyncio
import os
import tomllib
from pathlib import Path

import pytest

from proxy.config import ConfigError, parse_rules_doc
from proxy.embed import Embedder
from proxy.pipeline.registry import parse_stage_rules
from proxy.pipeline.semantic.standalone import EMBEDDER
from proxy.testing import LiveProxy

HELLO = '''
[[patterns.rules]]
name = "hello"
phrases = ["hi"]
replies = ["Hey!"]
'''
ROUTE_RULE = '[route]\naliases = { auto = "gpt-4o-mini" }\n[[route.rules]]\nname = "a"\n'


def parse(text: str) -> None:
    parse_stage_rules(parse_rules_doc(tomllib.loads(text), "rules.toml"))


@pytest.mark.parametrize(
    ("rules", "message"),
    [
        ('[[patterns.rules]]\nname = "a"\nphrases = ["hi"]\nreplies = ["x"]\nfoo = 1',
         "rules.toml: [patterns.rules.0 \"a\"] unknown field(s) ['foo']"),
        ('[[patterns.rules]]\nphrases = ["hi"]\nreplies = ["x"]',
         "rules.toml: [patterns.rules.0] name: every rule needs a name"),
        ('[[patterns.rules]]\nname = "a"\nreplies = ["x"]',
         "rules.toml: [patterns.rules.0 \"a\"] "
         "needs at least one of phrases, keyword_sets or regex"),
        ('[[patterns.rules]]\nname = "a"\nphrases = ["hi"]',
         "rules.toml: [patterns.rules.0 \"a\"] replies: needs at least one reply"),
        ('[[patterns.rules]]\nname = "a"\nphrases = ["!!"]\nreplies = ["x"]',
         "rules.toml: [patterns.rules.0 \"a\"] phrases: '!!' is empty once normalized"),
        ('[[patterns.rules]]\nname = "a"\nregex = "(["\nreplies = ["x"]',
         "rules.toml: [patterns.rules.0 \"a\"] regex: invalid regular expression"),
        ('[[patterns.rules]]\nname = "a"\nphrases = ["hi"]\nreplies = ["x", "Hi {user.name}"]',
         "rules.toml: [patterns.rules.0 \"a\"] "
         "replies[1]: placeholder {user.name} must be a plain"),
        ('[[patterns.rules]]\nname = "a"\nphrases = ["hi"]\nreplies = ["Hi {name"]',
         "rules.toml: [patterns.rules.0 \"a\"] replies[0]: expected '}' before end of string"),
        ('[[patterns.rules]]\nname = "a"\nphrases = ["hi"]\nreplies = ["x"]\npick = "first"',
         "rules.toml: [patterns.rules.0 \"a\"] "
         "pick: expected one of ['random', 'rotate'], got 'first'"),
        (HELLO + HELLO,
         "rules.toml: [patterns.rules.1 \"hello\"] name: another rule is already called 'hello'"),
        (HELLO + 'when = { max_words = "two" }',
         "rules.toml: [patterns.rules.0 \"hello\"] when.max_words: expected an integer, got 'two'"),
        (HELLO + 'when = { hours = "25-3" }',
         "rules.toml: [patterns.rules.0 \"hello\"] "
         "when.hours: expected 'START-END' in whole hours 0-24"),
        (HELLO + 'when = { metadata = { streak = ">= many" } }',
         "rules.toml: [patterns.rules.0 \"hello\"] "
         "when.metadata.streak: >= needs a number, got 'many'"),
        (HELLO + 'when = { metadata = "streak" }',
         "rules.toml: [patterns.rules.0 \"hello\"] when.metadata: expected a table, got str"),
        (HELLO + 'when = { max_word = 2 }',
         "rules.toml: [patterns.rules.0 \"hello\"] when: unknown field(s) ['max_word']"),
        ('[patterns]\ntimezone = "Mars/Olympus"',
         "rules.toml: [patterns] timezone: unknown time zone 'Mars/Olympus'"),
        (ROUTE_RULE + 'model = "gpt-4o"\nwhen = { max_tokens = "ten" }',
         "rules.toml: [route.rules.0 \"a\"] when.max_tokens: expected an integer, got 'ten'"),
        (ROUTE_RULE,
         "rules.toml: [route.rules.0 \"a\"] model: every rule needs the model to route to"),
        (ROUTE_RULE + 'model = "auto"',
         "rules.toml: [route.rules.0 \"a\"] "
         "model: 'auto' is an alias"),
        (ROUTE_RULE + 'model = "gpt-4o"\nconfidence = 1.5',
         "rules.toml: [route.rules.0 \"a\"] confidence: must be between 0 and 1, got 1.5"),
        ('[[route.rules]]\nname = "a"\nmodel = "gpt-4o"',
         "rules.toml: [route.rules.0 \"a\"] applies_to: names no model or alias"),
        (ROUTE_RULE + 'model = "gpt-4o"\nwhen = { optimize_for = ["speed"] }',
         "rules.toml: [route.rules.0 \"a\"] "
         "when.optimize_for: expected values from ['cost', 'latency',"),
        (ROUTE_RULE + 'model = "gpt-4o"\nwhen = { min_words = 9, max_words = 3 }',
         "rules.toml: [route.rules.0 \"a\"] when.max_words: is below min_words (9)"),
        ('[route]\naliases = { auto = "coach", coach = "gpt-4o" }',
         "rules.toml: [route] aliases.auto: points at another alias 'coach'"),
        ('[route]\naliases = { auto = 4 }',
         "rules.toml: [route] aliases.auto: expected a model name, got 4"),
    ],
)
def test_rule_errors_name_file_rule_and_field(rules: str, message: str) -> None:
    stage = "route" if "[route" in rules else "patterns"
    with pytest.raises(ConfigError) as err:
        parse(f'pipeline = ["{stage}"]\n{rules}')
    assert str(err.value).startswith(message)


def test_default_rule_file_parses() -> None:
    root = Path(__file__).resolve().parents[2]
    parse((root / "rules" / "config.toml").read_text())


RELOAD_RULES = '''pipeline = ["patterns"]
[[patterns.rules]]
name = "hello"
phrases = ["hi"]
replies = ["REPLY"]
'''


def test_reload_applies_a_good_edit_and_refuses_a_broken_one(tmp_path: Path) -> None:
    messages = [{"role": "user", "content": "hi"}]
    with LiveProxy(tmp_path, rules=RELOAD_RULES.replace("REPLY", "first")) as live:
        client = live.client()
        assert client.chat.completions.create(model="gpt-4o", messages=messages
                                              ).choices[0].message.content == "first"
        assert live.reload_rules(RELOAD_RULES.replace("REPLY", "second"))
        assert client.chat.completions.create(model="gpt-4o", messages=messages
                                              ).choices[0].message.content == "second"
        assert not live.reload_rules(RELOAD_RULES.replace('phrases = ["hi"]',
                                                          'phrases = "hi"\nregex = "(["'))
        assert "[patterns.rules.0 \"hello\"] regex: invalid regular expression" in (
            live.pipeline.last_error or "")
        assert client.chat.completions.create(model="gpt-4o", messages=messages
                                              ).choices[0].message.content == "second"
        assert len(live.fake.received) == 0


def test_a_reload_goes_in_force_once_what_it_loads_is_ready(tmp_path: Path) -> None:
    messages = [{"role": "user", "content": "hi"}]
    with LiveProxy(tmp_path, rules=RELOAD_RULES.replace("REPLY", "first")) as live:
        client = live.client()
        # an embedder that never loads stands for a model the new rules are still fitting
        live.resources.kept.replace(EMBEDDER, Embedder())
        live.rules_path.write_text(RELOAD_RULES.replace("REPLY", "second"))
        os.utime(live.rules_path, ns=(1, 1))  # a changed mtime, whatever the clock's grain
        reload = asyncio.run_coroutine_threadsafe(live.pipeline.reload_when_ready(), live.loop)
        # the reload is built but waits: requests meanwhile get the last pipeline's answer
        assert client.chat.completions.create(model="gpt-4o", messages=messages
                                              ).choices[0].message.content == "first"
        assert not reload.done()
        live.resources.kept.replace(EMBEDDER, _Ready())
        assert reload.result(timeout=30) is True
        assert client.chat.completions.create(model="gpt-4o", messages=messages
                                              ).choices[0].message.content == "second"


class _Ready:
    """A kept object that has finished loading."""

    ready = True
