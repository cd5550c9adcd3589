"""Former name of `jaxmia.analysis.tables`; import that.

Kept only for `scripts/attack_pilot.py`, `scripts/class_sweep.py` and `scripts/prior_coverage.py`, which still
import it by this name: delete this file once they import `tables`.
"""
from jaxmia.analysis.tables import format_mean_sd, markdown_table, write_outputs

__all__ = ["format_mean_sd", "markdown_table", "write_outputs"]
