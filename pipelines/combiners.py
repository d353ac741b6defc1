"""Beam combiners the jobs share."""

from __future__ import annotations

import collections
from collections.abc import Iterable, Mapping

import apache_beam as beam

__all__ = ["SumCounters"]


class SumCounters(beam.CombineFn):  # type: ignore[misc]
    """Add up ``Counter`` dicts of named counts."""

    def create_accumulator(self) -> collections.Counter[str]:
        """An empty count."""
        return collections.Counter()

    def add_input(
        self, acc: collections.Counter[str], counts: Mapping[str, int]
    ) -> collections.Counter[str]:
        """Add one count."""
        acc.update(counts)
        return acc

    def merge_accumulators(
        self, accs: Iterable[collections.Counter[str]]
    ) -> collections.Counter[str]:
        """Add counts up."""
        out: collections.Counter[str] = collections.Counter()
        for acc in accs:
            out.update(acc)
        return out

    def extract_output(self, acc: collections.Counter[str]) -> dict[str, int]:
        """The totals as a plain dict."""
        return dict(acc)
