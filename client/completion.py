"""`ftjobs completion bash|zsh`: a completion script generated from the CLI's own argparse parser.

Static (no Python runs on each Tab): commands, their options, the values of options with choices, and the
actions of commands that have them (`webhooks create|list|...`); files where an argument is a path or an id.
zsh loads the same function through its bash compatibility layer (bashcompinit).
"""

from __future__ import annotations

import argparse
import shlex

SHELLS = ("bash", "zsh")


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def _options(parser: argparse.ArgumentParser) -> list[str]:
    return sorted({s for a in parser._actions for s in a.option_strings if s.startswith("--")})


def _positional_choices(parser: argparse.ArgumentParser) -> list[str]:
    return [
        str(c)
        for a in parser._actions
        if not a.option_strings and a.choices and not isinstance(a, argparse._SubParsersAction)
        for c in a.choices
    ]


def _valued(parser: argparse.ArgumentParser) -> list[str]:
    """Options that take a value (the word after them is not a command)."""
    return sorted({s for a in parser._actions if a.nargs != 0 for s in a.option_strings})


def _words(words: list[str]) -> str:
    return shlex.quote(" ".join(words))


def _case_choices(name: str, parser: argparse.ArgumentParser, indent: str) -> list[str]:
    """`case "$cmd $prev"` arms for the options of `name` that have choices."""
    arms = []
    for action in parser._actions:
        if action.choices and action.option_strings:
            for option in action.option_strings:
                reply = f'COMPREPLY=($(compgen -W {_words([str(c) for c in action.choices])} -- "$cur"))'
                arms.append(f'{indent}"{name} {option}") {reply}; return;;')
    return arms


def bash_script(parser: argparse.ArgumentParser) -> str:
    prog = parser.prog
    commands = _subparsers(parser)
    skip = " ".join(_valued(parser) + sorted({s for p in commands.values() for s in _valued(p)}))
    value_arms, command_arms = [], []
    for name, sub in commands.items():
        value_arms += _case_choices(name, sub, " " * 8)
        actions = _subparsers(sub)
        for action_name, action_parser in actions.items():
            value_arms += _case_choices(f"{name} {action_name}", action_parser, " " * 8)
        words = _words(_options(sub) + list(actions) + _positional_choices(sub))
        if not actions:
            # Paths (a dataset) where a positional argument takes any value; only its choices where it has some.
            files = "" if _positional_choices(sub) else ' [[ "$cur" != -* ]] && COMPREPLY+=($(compgen -f -- "$cur"));'
            command_arms.append(f'        {name}) COMPREPLY=($(compgen -W {words} -- "$cur"));{files};')
            continue
        inner = " ".join(
            f'{a}) COMPREPLY=($(compgen -W {_words(_options(p))} -- "$cur"));;' for a, p in actions.items()
        )
        command_arms.append(
            f'        {name}) if [[ -z "$action" ]]; then COMPREPLY=($(compgen -W {words} -- "$cur"));'
            f' else case "$action" in {inner} esac; fi;;'
        )
    top = _words(list(commands) + _options(parser))
    nested = " ".join(name for name, sub in commands.items() if _subparsers(sub))
    fn = f"_{prog.replace('-', '_')}"
    return "\n".join(
        [
            f"# {prog} completion for bash: eval \"$({prog} completion bash)\" (e.g. in ~/.bashrc)",
            f"{fn}() {{",
            '    local cur="${COMP_WORDS[COMP_CWORD]}" prev="${COMP_WORDS[COMP_CWORD-1]}" cmd="" action="" i w',
            f"    local valued=\" {skip} \" nested=\" {nested} \"",
            "    for ((i = 1; i < COMP_CWORD; i++)); do",
            '        w="${COMP_WORDS[i]}"',
            '        if [[ "$w" == -* ]]; then [[ "$valued" == *" $w "* ]] && ((i++)); continue; fi',
            '        if [[ -z "$cmd" ]]; then cmd="$w"',
            '        elif [[ -z "$action" && "$nested" == *" $cmd "* ]]; then action="$w"; fi',
            "    done",
            '    case "$cmd${action:+ $action} $prev" in',
            *value_arms,
            "    esac",
            '    case "$cmd" in',
            f'        "") COMPREPLY=($(compgen -W {top} -- "$cur"));;',
            *command_arms,
            "    esac",
            "}",
            f"complete -o default -F {fn} {prog}",
            "",
        ]
    )


def zsh_script(parser: argparse.ArgumentParser) -> str:
    prog = parser.prog
    return "\n".join(
        [
            f"# {prog} completion for zsh: eval \"$({prog} completion zsh)\" (e.g. in ~/.zshrc)",
            "autoload -U +X compinit && compinit",
            "autoload -U +X bashcompinit && bashcompinit",
            bash_script(parser).split("\n", 1)[1],
        ]
    )


def completion_script(parser: argparse.ArgumentParser, shell: str) -> str:
    """The script for `shell` (bash or zsh)."""
    return zsh_script(parser) if shell == "zsh" else bash_script(parser)
