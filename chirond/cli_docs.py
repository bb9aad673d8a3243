"""Shell completion (bash) and man pages, generated from the argparse parsers themselves, so they
never drift from the commands: `chirond install --completion bash`, `chirond install --man DIR`."""

from __future__ import annotations

import argparse
import datetime as dt
import re
import shlex

from chirond import __version__
from chirond.cli_common import walk


def _options(p: argparse.ArgumentParser) -> list[str]:
    return sorted(o for a in p._actions for o in a.option_strings if a.help != argparse.SUPPRESS)


def bash_completion(prog: str, parser: argparse.ArgumentParser) -> str:
    """A bash completion script: subcommands, then each command's options (files otherwise)."""
    fn = "_" + re.sub(r"\W", "_", prog)
    cases = []
    for path, p in walk(parser):
        subs = [n for n in _subparsers(p)]
        words = " ".join(shlex.quote(w) for w in [*subs, *_options(p)])
        cases.append(f'        {shlex.quote(" ".join(path))}) words={shlex.quote(words)} ;;')
    return f"""# bash completion for {prog} {__version__}; generated from its parser (chirond install --completion bash)
{fn}() {{
    local cur path="" w i
    cur="${{COMP_WORDS[COMP_CWORD]}}"
    for ((i = 1; i < COMP_CWORD; i++)); do
        w="${{COMP_WORDS[i]}}"
        [[ $w == -* ]] && continue
        local try="${{path:+$path }}$w"
        {fn}_known "$try" && path="$try"
    done
    local words=""
    case "$path" in
{chr(10).join(cases)}
    esac
    COMPREPLY=($(compgen -W "$words" -- "$cur"))
    [[ ${{#COMPREPLY[@]}} -eq 0 && $cur != -* ]] && COMPREPLY=($(compgen -f -- "$cur"))
}}
{fn}_known() {{
    case "$1" in
        {"|".join(shlex.quote(" ".join(path)) for path, _ in walk(parser) if path) or "''"}) return 0 ;;
    esac
    return 1
}}
complete -o filenames -F {fn} {prog}
"""


def _subparsers(p: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for a in p._actions:
        if isinstance(a, argparse._SubParsersAction):
            return dict(a.choices)
    return {}


def _roff(text: str) -> str:
    text = text.replace("\\", "\\e").replace("-", "\\-")
    return "\n".join(("\\&" + line) if line.startswith((".", "'")) else line for line in text.splitlines())


def man_page(prog: str, parser: argparse.ArgumentParser, summary: str) -> str:
    """A man(7) page: the program, then every command with its usage, options and example."""
    out = [f'.TH {prog.upper()} 1 "{dt.date.today():%Y-%m-%d}" "chirond {__version__}" "User Commands"',
           ".SH NAME", f"{prog} \\- {_roff(summary)}", ".SH SYNOPSIS", ".nf",
           _roff(parser.format_usage().removeprefix("usage: ").strip()), ".fi"]
    if parser.description:
        out += [".SH DESCRIPTION", _roff(parser.description)]
    out.append(".SH COMMANDS")
    for path, p in walk(parser):
        if not path:
            continue
        out += [f".SS {_roff(' '.join((prog, *path)))}", ".nf", _roff(p.format_usage().removeprefix("usage: ").strip()),
                ".fi"]
        if p.description:
            out.append(_roff(p.description))
        for a in p._actions:
            if a.help == argparse.SUPPRESS or isinstance(a, argparse._SubParsersAction):
                continue
            name = ", ".join(a.option_strings) or (a.metavar if isinstance(a, str) else None) or a.dest
            text = (a.help or "").replace("%(default)s", str(a.default)).replace("%%", "%")
            out += [".TP", f"\\fB{_roff(str(name))}\\fR", _roff(text)]
        if p.epilog:
            out += [".PP", ".nf", _roff(p.epilog), ".fi"]
    out += [".SH SEE ALSO", "chirond(1), chiron(1); docs/admin.md and docs/serving.md in the source."]
    return "\n".join(out) + "\n"
