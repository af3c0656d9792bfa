"""The claims table: each of the papers' claims, what was measured, and whether it holds.

A claim's test is fixed in advance (its ``criterion``) and computed from result Datasets by a
pure function; a claim whose numbers are missing is "not measured", never "holds".
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Claim:
    """One claim: its statement, the test applied, the measured numbers, and the verdict."""

    key: str  # short identifier, e.g. "rate_falls_with_gamma"
    statement: str  # the paper's claim in one sentence
    criterion: str  # the test applied to the numbers
    evidence: str  # the measured numbers
    holds: bool | None  # None: could not be measured

    @property
    def verdict(self) -> str:
        if self.holds is None:
            return "not measured"
        return "holds" if self.holds else "does not hold"


def markdown(claims: list[Claim], title: str, preamble: str = "") -> str:
    """The claims as a Markdown document: a summary table, then one section per claim."""
    lines = [f"# {title}", ""]
    if preamble:
        lines += [preamble, ""]
    lines += ["| claim | verdict |", "|---|---|"]
    lines += [f"| {claim.statement} | **{claim.verdict}** |" for claim in claims]
    lines.append("")
    for claim in claims:
        lines += [f"## {claim.statement}", "", f"- verdict: **{claim.verdict}**",
                  f"- test: {claim.criterion}", f"- measured: {claim.evidence}", ""]
    held = sum(claim.holds is True for claim in claims)
    lines.append(f"{held} of {len(claims)} claims hold.")
    return "\n".join(lines) + "\n"


def strictly_monotone(values, increasing: bool) -> bool:
    """Whether ``values`` (in order) strictly increase (or decrease); False with NaNs."""
    values = [float(v) for v in values]
    if any(v != v for v in values):
        return False
    pairs = list(zip(values, values[1:], strict=False))
    return all(b > a for a, b in pairs) if increasing else all(b < a for a, b in pairs)


def fmt(value: float, digits: int = 4) -> str:
    """A number for the table: ``g`` format, NaN as 'nan'."""
    return f"{float(value):.{digits}g}"
