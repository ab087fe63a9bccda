"""`authd completion bash|zsh|fish`: shell completion generated from the parser itself, so
it never lists a command or flag that does not exist."""

from __future__ import annotations

import argparse

from authd.cli.errors import usage_error

SHELLS = ("bash", "zsh", "fish")


def completion_table(parser: argparse.ArgumentParser) -> dict[str, list[str]]:
    """For each command path typed so far (``""``, ``"entry"``, ``"entry create"``), the
    words that may come next: subcommands, else the command's flags."""
    table: dict[str, list[str]] = {}

    def walk(node: argparse.ArgumentParser, path: str) -> None:
        words: list[str] = []
        for action in node._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, child in action.choices.items():
                    words.append(name)
                    walk(child, f"{path} {name}".strip())
            else:
                words += [o for o in action.option_strings if o.startswith("--")]
                if action.choices is not None and not action.option_strings:
                    words += [str(c) for c in action.choices]
        table[path] = words

    walk(parser, "")
    return table


def _case_arms(table: dict[str, list[str]], shell: str) -> str:
    arms = []
    for path, words in table.items():
        if shell == "fish":
            arms.append(f"        case '{path}'\n            printf '%s\\n' {' '.join(words)}")
        else:
            arms.append(f'        "{path}") echo "{" ".join(words)}" ;;')
    return "\n".join(arms)


def bash_script(table: dict[str, list[str]]) -> str:
    return f"""# authd completion for bash (and zsh through bashcompinit)
_authd_next() {{
    case "$1" in
{_case_arms(table, "bash")}
    esac
}}
_authd() {{
    local cur="${{COMP_WORDS[COMP_CWORD]}}" path="" word i
    for ((i = 1; i < COMP_CWORD; i++)); do
        word="${{COMP_WORDS[i]}}"
        case "$word" in -*) continue ;; esac
        if [[ " $(_authd_next "$path") " == *" $word "* ]]; then
            path="${{path:+$path }}$word"
        fi
    done
    COMPREPLY=($(compgen -W "$(_authd_next "$path")" -- "$cur"))
}}
complete -o default -F _authd authd
"""


def zsh_script(table: dict[str, list[str]]) -> str:
    return "# authd completion for zsh\nautoload -U +X bashcompinit && bashcompinit\n" + (
        bash_script(table)
    )


def fish_script(table: dict[str, list[str]]) -> str:
    return f"""# authd completion for fish
function __authd_next
    switch "$argv[1]"
{_case_arms(table, "fish")}
    end
end
function __authd_path
    set -l path
    for word in (commandline -opc)[2..-1]
        string match -q -- '-*' $word; and continue
        if contains -- $word (__authd_next (string join ' ' $path))
            set path $path $word
        end
    end
    string join ' ' $path
end
complete -c authd -f -a '(__authd_next (__authd_path))'
"""


def cmd_completion(args: argparse.Namespace) -> int:
    if args.shell not in SHELLS:
        raise usage_error(f"completion: no script for {args.shell!r}; use bash, zsh or fish")
    table = completion_table(args.root_parser)
    script = {"bash": bash_script, "zsh": zsh_script, "fish": fish_script}[args.shell](table)
    print(script, end="")
    return 0
