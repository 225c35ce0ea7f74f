"""The line every benchmark prints per figure, so ``run_all.py`` can tabulate them.

Example:
    >>> result("client overhead", "1.02x", "<= 1.3x", True)
    RESULT|client overhead|1.02x|<= 1.3x|yes
"""


def result(figure: str, value: str, target: str = "", met: bool | None = None) -> None:
    """Print one figure beside its target (``met`` None: reported, no target)."""
    verdict = "" if met is None else ("yes" if met else "NO")
    print(f"RESULT|{figure}|{value}|{target}|{verdict}", flush=True)
