"""mkdocs hook: the figures of the committed study exports (`studies/NAME/*.png`) published with the docs.

A study page links its figures where the export wrote them, one folder up from the page's own folder:
`docs/studies/precision-parity.md` shows `precision_parity/train_loss.png`, which this hook serves from
`studies/precision_parity/train_loss.png`. The figures stay in one place (the export, whose manifest holds
their checksums); nothing is copied into docs/. Registered in mkdocs.yml under `hooks:`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mkdocs.structure.files import File, Files

STUDIES = Path(__file__).resolve().parents[2] / "studies"


def on_files(files: Files, config: Any) -> Files:
    for png in sorted(STUDIES.glob("*/*.png")):
        files.append(File.generated(config, f"studies/{png.parent.name}/{png.name}", abs_src_path=str(png)))
    return files
