"""The "Posterior references" block of the posterior_concentration report: which reference of the
``[reference]`` stage converged, why it stopped, what it targeted and what it cost
(docs/estimates.md)."""
from __future__ import annotations

import math

from .format import fmt_num
from .toolkit import md_table

__all__ = ["REFERENCE_KEYS", "reference_entries", "references_section"]

REFERENCE_KEYS = ("name", "sampler", "converged", "stop_reason", "rhat", "ess", "rhat_labels", "acceptance",
                  "divergences", "divergences_unit", "wall_s", "gradient_evaluations", "gradient_unit", "n_chains",
                  "samples_per_chain", "rhat_norm", "weight_decay", "nbeta")


def reference_entries(ctx) -> list[dict]:
    """One entry per ``[reference]`` reference (no labels: the report needs only the summary)."""
    ref = ctx["reference"]
    if ref.get("skipped"):
        return []
    return [{k: r.get(k, math.nan) for k in REFERENCE_KEYS} for r in ref.get("references", [])]



def references_section(r: dict) -> list[str]:
    """The "Posterior references" block: which reference converged, why it stopped, at what cost."""
    refs = r.get("references") or []
    out = ["## Posterior references\n"]
    if not refs:
        return out + ["No reference beyond the fixed-length SGLD stage was run (`[reference]` sgld_target and hmc "
                      "are off).\n"]
    out.append("H5 is decided against each reference below that converged (pooled split-R̂ of the loss and of the "
               "cluster assignment ≤ the target, bulk ESS of the loss ≥ the target); against one that did not it "
               "is *inconclusive: reference not converged* (docs/estimates.md).\n")
    wd = refs[0].get("weight_decay", math.nan)
    if wd == wd:  # recorded
        out.append(f"Target of every reference: exp(−nβ L(w) − (ω/2)‖w‖²), nβ = {fmt_num(refs[0]['nbeta'])}, "
                   f"prior precision ω = {wd:g}" + (" (a flat prior: for this ReLU network the posterior is "
                   "improper, so no reference can converge; docs/estimates.md)" if wd == 0 else
                   (" (a N(0, I) prior on the weights)" if wd == 1 else f" (a N(0, {1 / wd:g}·I) prior on the weights)")) + ".\n")
    rows = [[x["name"], x["sampler"], "yes" if x["converged"] else "**no**", x["stop_reason"], fmt_num(x["rhat"]),
             fmt_num(x["ess"]), fmt_num(x["rhat_labels"]), fmt_num(x.get("rhat_norm", math.nan)),
             fmt_num(x["acceptance"]),
             f"{x['divergences']} {x['divergences_unit']}", f"{x['n_chains']} × {x['samples_per_chain']}",
             fmt_num(x["wall_s"]), f"{x['gradient_evaluations']} {x['gradient_unit']}"] for x in refs]
    out += [md_table(["reference", "sampler", "converged", "stop reason", "R̂ (loss)", "ESS (loss)",
                      "R̂ (cluster)", "R̂ (‖w‖)", "acceptance", "divergences", "chains × kept samples", "compute [s]",
                      "gradient evaluations"], rows), ""]
    return out
