"""A reader for Logstash pipeline files, enough for ours: sections, plugins, options, conditionals.

Not Logstash's grammar (treetop, logstash-core/lib/logstash/compiler/lscl/lscl_grammar.treetop)
in full: it reads what `logstash/pipeline/*.conf` uses and raises on anything else, so a file it
cannot read fails the tests instead of being checked only in part.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

_TOKEN = re.compile(r"""
    (?P<space>\s+) | (?P<comment>\#[^\n]*)
  | (?P<string>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*')
  | (?P<arrow>=>) | (?P<op>==|!=|=~|!~|<=|>=|<|>|!)
  | (?P<punct>[{}\[\],()])
  | (?P<number>-?\d+(?:\.\d+)?)
  | (?P<word>[A-Za-z_@][\w.@-]*)
""", re.VERBOSE)
SECTIONS = ("input", "filter", "output")


@dataclass
class Plugin:
    """One plugin block: where it is, its name, its options and the conditions around it."""

    section: str
    name: str
    options: dict[str, Any]
    conditions: list[str] = field(default_factory=list)
    line: int = 0


def _tokens(text: str) -> list[tuple[str, str, int]]:
    found, at = [], 0
    while at < len(text):
        match = _TOKEN.match(text, at)
        if match is None:
            line = text.count("\n", 0, at) + 1
            raise ValueError(f"line {line}: cannot read {text[at:at + 20]!r}")
        kind = match.lastgroup
        assert kind is not None
        if kind not in ("space", "comment"):
            found.append((kind, match.group(), text.count("\n", 0, at) + 1))
        at = match.end()
    return found


class _Reader:
    def __init__(self, text: str) -> None:
        self.tokens = _tokens(text)
        self.at = 0
        self.plugins: list[Plugin] = []

    def peek(self) -> tuple[str, str, int]:
        return self.tokens[self.at] if self.at < len(self.tokens) else ("end", "", 0)

    def take(self, value: str | None = None) -> tuple[str, str, int]:
        token = self.peek()
        if token[0] == "end" or (value is not None and token[1] != value):
            raise ValueError(f"line {token[2]}: expected {value or 'more'}, found {token[1]!r}")
        self.at += 1
        return token

    def config(self) -> list[Plugin]:
        while self.peek()[0] != "end":
            _, name, line = self.take()
            if name not in SECTIONS:
                raise ValueError(f"line {line}: {name!r} is not input, filter or output")
            self.take("{")
            self.body(name, [])
        return self.plugins

    def body(self, section: str, conditions: list[str]) -> None:
        """Plugins and conditionals up to the closing brace."""
        while self.peek()[1] != "}":
            kind, word, line = self.take()
            if word == "if":
                self.branches(section, conditions)
                continue
            if kind != "word":
                raise ValueError(f"line {line}: expected a plugin name, found {word!r}")
            self.take("{")
            self.plugins.append(Plugin(section, word, self.options(), list(conditions), line))
        self.take("}")

    def branches(self, section: str, outer: list[str]) -> None:
        """`if <cond> { } else if <cond> { } else { }`; `if` already taken."""
        taken: list[str] = []
        while True:
            condition = self.condition()
            self.body(section, [*outer, *(f"not ({c})" for c in taken), condition])
            taken.append(condition)
            if self.peek()[1] != "else":
                return
            self.take("else")
            if self.peek()[1] == "if":
                self.take("if")
                continue
            self.take("{")
            self.body(section, [*outer, *(f"not ({c})" for c in taken)])
            return

    def condition(self) -> str:
        words = []
        while self.peek()[1] != "{":
            words.append(self.take()[1])
        self.take("{")
        return re.sub(r"\s*([\[\]])\s*|(!)\s+", r"\1\2", " ".join(words)).strip()

    def options(self) -> dict[str, Any]:
        found: dict[str, Any] = {}
        while self.peek()[1] != "}":
            kind, name, line = self.take()
            if kind not in ("word", "string"):
                raise ValueError(f"line {line}: expected an option name, found {name!r}")
            self.take("=>")
            found[_unquote(name)] = self.value()
        self.take("}")
        return found

    def value(self) -> Any:
        kind, text, line = self.take()
        if kind == "string":
            return _unquote(text)
        if kind == "number":
            return float(text) if "." in text else int(text)
        if text == "[":
            items = []
            while self.peek()[1] != "]":
                items.append(self.value())
                if self.peek()[1] == ",":
                    self.take(",")
            self.take("]")
            return items
        if text == "{":
            pairs: dict[str, Any] = {}
            while self.peek()[1] != "}":
                key = _unquote(self.take()[1])
                self.take("=>")
                pairs[key] = self.value()
                if self.peek()[1] == ",":
                    self.take(",")
            self.take("}")
            return pairs
        if kind == "word":
            if self.peek()[1] == "{":  # a codec with options: json_lines { charset => ... }
                self.take("{")
                return {"codec": text, "options": self.options()}
            return text
        raise ValueError(f"line {line}: cannot read a value from {text!r}")


def _unquote(text: str) -> str:
    # config.support_escapes is off (the default): backslashes stay as they are.
    return text[1:-1] if text[:1] in ("'", '"') else text


def read(text: str) -> list[Plugin]:
    """Every plugin of a pipeline file, in order."""
    return _Reader(text).config()
