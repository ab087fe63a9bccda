"""CPU lists, written as Linux writes them (``taskset -c``, cpusets): ``0``, ``0,2``,
``2-3``, ``0-1,6``, each number a CPU as the kernel numbers them.

A config names the CPUs some of authd's threads run on; the two words ``auto`` and ``all``
stand for "authd chooses" and "wherever the kernel puts them".
"""

from __future__ import annotations

from typing import Final

# The kernel's own ceiling on CPU numbers (CONFIG_NR_CPUS maximum): a bigger one is a typo.
MAX_CPU: Final = 8191
CPU_WORDS: Final = ("auto", "all")


def parse_cpu_list(text: str) -> frozenset[int]:
    """The CPUs of a list such as ``0-1,6``; ValueError says what is wrong."""
    cpus: set[int] = set()
    for part in text.split(","):
        first, dash, last = part.strip().partition("-")
        low, high = _cpu(first, text), _cpu(last, text) if dash else None
        if high is None:
            cpus.add(low)
            continue
        if high < low:
            raise ValueError(f"{part.strip()!r} in {text!r} is a range that ends before it starts")
        cpus.update(range(low, high + 1))
    return frozenset(cpus)


def format_cpu_list(cpus: frozenset[int]) -> str:
    """The shortest list for ``cpus``, ranges where consecutive: {0, 1, 2, 6} → ``0-2,6``."""
    parts: list[str] = []
    ordered = sorted(cpus)
    start = 0
    for i, cpu in enumerate(ordered):
        if i + 1 < len(ordered) and ordered[i + 1] == cpu + 1:
            continue
        low = ordered[start]
        parts.append(str(low) if low == cpu else f"{low}-{cpu}")
        start = i + 1
    return ",".join(parts)


def _cpu(word: str, text: str) -> int:
    word = word.strip()
    if not word.isascii() or not word.isdigit():
        raise ValueError(f"{text!r} is not a CPU list like 0-1,6 (or auto, or all)")
    cpu = int(word)
    if cpu > MAX_CPU:
        raise ValueError(f"CPU {cpu} in {text!r} is beyond the kernel's {MAX_CPU}")
    return cpu
