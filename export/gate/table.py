"""The gate's terminal table: a header with the effective tolerance before any row is judged,
one row per input batch as it is judged, and a footer with the accuracy check and the verdict."""

from __future__ import annotations

import numpy as np

from .accuracy import Accuracy, min_lost_images
from .parity import Comparison, Verdict
from .tolerances import TOLERANCES


def accuracy_line(acc: Accuracy) -> str:
    """The accuracy check in one line, with what the split can and cannot resolve."""
    line = (f"accuracy on {acc.samples} held-out labelled images: reference "
            f"{acc.reference_top1:.2f}%, candidate {acc.candidate_top1:.2f}% "
            f"({-acc.drop_points:+.2f} points; {acc.lost} lost, {acc.gained} gained, McNemar "
            f"p = {acc.p_value:.2g}), agreement {acc.agreement:.1%}, min cos "
            f"{acc.min_cosine:.5f}: {'pass' if acc.passed else 'FAIL: ' + '; '.join(acc.failures)}")
    if not acc.resolves_limit and acc.limit_points:
        need = int(np.ceil(min_lost_images() * 100 / acc.limit_points))
        line += (f"\nnote: {acc.samples} images cannot resolve a {acc.limit_points:g}-point "
                 f"drop: the smallest drop they can show is {acc.resolvable_points:.2f} points "
                 f"({min_lost_images()} images); a test split of {need}+ images can")
    return line


TABLE_HEAD = (f"{'inputs':<15} {'max abs':>9} {'max rel':>9} {'fail':>6} {'min cos':>10} "
              f"{'top1':>7} {'top1*':>6} {'top5':>7} {'finite':>6}  result")


def table_header(precision: str, candidate: str, reference: str, arithmetic: str = "") -> str:
    """What is compared and the effective tolerance, before any row is judged."""
    tol = TOLERANCES[precision]
    lines = [f"parity: {candidate} vs {reference} ({precision}: atol {tol.atol:g} x max(1, "
             f"logit std), rtol {tol.rtol:g}, cos >= {tol.min_cosine})"]
    if arithmetic and arithmetic != precision:
        lines.append(f"arithmetic: {arithmetic}")
    lines += [TABLE_HEAD, "-" * len(TABLE_HEAD)]
    return "\n".join(lines)


def table_row(c: Comparison) -> str:
    clear = "-" if c.top1_clear_agreement is None else f"{c.top1_clear_agreement:.0%}"
    # figures in brackets are reported, not judged (the footer says so)
    fail = str(c.failing_elements) if c.elementwise else f"({c.failing_elements})"
    return (f"{c.name:<15} {c.max_abs_error:>9.2e} {c.max_rel_error:>9.2e} "
            f"{fail:>6} {c.min_cosine:>10.7f} {f'({c.top1_agreement:.0%})':>7} "
            f"{clear:>6} {f'({c.top5_overlap:.0%})':>7} {'yes' if c.finite else 'NO':>6}  "
            f"{'pass' if c.passed else 'FAIL: ' + '; '.join(c.failures)}")


def table_footer(verdict: Verdict) -> str:
    lines = ["top1* = top-1 agreement on samples whose reference margin is clear of the "
             "tolerance (judged); (...) = reported, not judged: a near tie may flip"
             + ("; logits beyond atol/rtol are not judged one by one at this precision"
                if not verdict.tolerance.elementwise else "")]
    acc = verdict.accuracy
    if acc is not None:
        lines.append(accuracy_line(acc))
    lines += [f"note: {note}" for note in verdict.notes]
    lines.append(f"verdict: {'PASS' if verdict.passed else 'FAIL'}")
    return "\n".join(lines)


def format_table(verdict: Verdict) -> str:
    """The terminal table: the header, one row per input batch, then the verdict line."""
    return "\n".join([table_header(verdict.precision, verdict.candidate, verdict.reference,
                                   verdict.arithmetic),
                      *(table_row(c) for c in verdict.comparisons), table_footer(verdict)])
