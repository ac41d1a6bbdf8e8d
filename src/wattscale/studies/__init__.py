"""Studies anyone can re-check: export a study's runs to a folder, load it back, check its stated findings.

- :func:`export_study`: one experiment's runs, evaluations, training steps, energy rows and plan as Parquet, two
  PNG figures, ``machine.json`` (machines, commands, wall time), ``manifest.json`` and a README
  (``wattscale export-study``);
- :func:`import_study`: such a folder into a (fresh) store, value for value, so that ``analyze`` and ``fit`` run
  on it as on the original (``wattscale import``);
- :func:`load_findings` / :func:`check_finding`: the numbers a study's page states, recomputed from the data
  (``wattscale check-study``).
"""

from __future__ import annotations

from .export import StudyExport, StudyImport, export_study, import_study
from .findings import Finding, FindingCheck, check_finding, load_findings, resolve_json_path

__all__ = ["Finding", "FindingCheck", "StudyExport", "StudyImport", "check_finding", "export_study", "import_study",
           "load_findings", "resolve_json_path"]
