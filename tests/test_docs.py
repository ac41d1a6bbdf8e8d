"""The docs: `mkdocs build --strict` passes, links resolve, the README stays short, and every example runs.

Convention for examples (stated on the docs' home page):
- a fenced `bash` block is run line by line, in page order (the order of mkdocs.yml's nav), in one scratch
  folder holding a copy of `experiments/`; every line must be a `wattscale ...` command, run in-process through
  `wattscale.cli.main`. It must exit 0, or the code written in a trailing `# exit N` comment. The word `RUN_ID`
  stands for the newest run in the store the command uses. A command with `--json` must print strict JSON.
- a fenced `python` block is exec'd in that folder;
- a fenced block with `title="NAME"` is written to NAME in that folder (an input the next commands read);
- a `bash`, `console` or `python` block that cannot run in a test (a GPU, torchrun, a cluster, a download, an
  install, a recorded transcript) has `<!-- not run: REASON -->` on the line above it; the test lists them.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
README_MAX_LINES = 200

FENCE = re.compile(r"^(?P<indent>\s*)```(?P<lang>[\w-]*)(?P<info>.*)$")
NOT_RUN = re.compile(r"^\s*<!--\s*not run:\s*(?P<reason>.*?)\s*-->\s*$")
TITLE = re.compile(r'title="(?P<title>[^"]+)"')
EXPECTED_EXIT = re.compile(r"#\s*exit\s+(?P<code>\d+)\s*$")
LINK = re.compile(r"!?\[[^\]]*\]\((?P<target>[^)\s]+)(?:\s+\"[^\"]*\")?\)")
RUNNABLE = ("bash", "console", "python", "sh", "shell")


@dataclass(frozen=True)
class Block:
    page: str
    line: int  # 1-based line of the opening fence
    lang: str
    title: str | None
    not_run: str | None  # the reason, for a block marked not run
    text: str

    @property
    def where(self) -> str:
        return f"{self.page}:{self.line}"


def nav_pages() -> list[str]:
    """The docs pages in nav order (mkdocs.yml)."""
    import yaml

    nav = yaml.safe_load((ROOT / "mkdocs.yml").read_text(encoding="utf-8"))["nav"]
    pages: list[str] = []

    def walk(items: Any) -> None:
        for item in items:
            value = next(iter(item.values())) if isinstance(item, dict) else item
            if isinstance(value, list):
                walk(value)
            else:
                pages.append(value)
    walk(nav)
    return pages


def blocks(page: str) -> list[Block]:
    """Every fenced block of a docs page, with its language, title and not-run reason."""
    lines = (DOCS / page).read_text(encoding="utf-8").splitlines()
    found: list[Block] = []
    i = 0
    while i < len(lines):
        match = FENCE.match(lines[i])
        if not match:
            i += 1
            continue
        indent = match.group("indent")
        start = i
        i += 1
        body: list[str] = []
        while i < len(lines) and lines[i].strip() != "```":
            body.append(lines[i][len(indent):] if lines[i].startswith(indent) else lines[i])
            i += 1
        previous = next((lines[j] for j in range(start - 1, -1, -1) if lines[j].strip()), "")
        reason = NOT_RUN.match(previous)
        title = TITLE.search(match.group("info"))
        found.append(Block(page, start + 1, match.group("lang"), title.group("title") if title else None,
                           reason.group("reason") if reason else None, "\n".join(body) + "\n"))
        i += 1
    return found


def all_blocks() -> list[Block]:
    """The README's blocks, then every docs page's, in nav order."""
    return [b for page in ["../README.md", *nav_pages()] for b in blocks(page)]


# ---- the site ---------------------------------------------------------------------------------------------

def test_every_docs_page_is_in_the_nav() -> None:
    pages = {str(p.relative_to(DOCS)) for p in DOCS.rglob("*.md") if "hooks" not in p.parts}
    assert pages == set(nav_pages())


def test_mkdocs_build_strict_passes(tmp_path: Path) -> None:
    if importlib.util.find_spec("mkdocs") is None or importlib.util.find_spec("mkdocstrings") is None:
        pytest.skip("mkdocs or mkdocstrings is not installed: pip install -e '.[docs]'")
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"), NO_MKDOCS_2_WARNING="1")
    done = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(ROOT / "mkdocs.yml"),
                           "-d", str(tmp_path / "site")], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "WARNING" not in done.stderr, done.stderr
    cli_page = (tmp_path / "site" / "reference" / "cli" / "index.html").read_text(encoding="utf-8")
    assert "wattscale train" in cli_page and "generated:" not in cli_page


def test_readme_is_at_most_200_lines() -> None:
    lines = (ROOT / "README.md").read_text(encoding="utf-8").splitlines()
    assert len(lines) <= README_MAX_LINES, f"README.md has {len(lines)} lines; move detail into docs/"


@pytest.mark.parametrize("doc", ["README.md", "CONTRIBUTING.md"]
                         + [f"docs/{p}" for p in sorted(str(p.relative_to(DOCS)) for p in DOCS.rglob("*.md"))])
def test_every_relative_link_resolves(doc: str) -> None:
    path = ROOT / doc
    text = path.read_text(encoding="utf-8")
    text = re.sub(r"```.*?```", "", text, flags=re.S)  # links inside code are not links
    broken = []
    for match in LINK.finditer(text):
        target = match.group("target")
        if re.match(r"^[a-z]+:", target) or target.startswith("#"):
            continue
        file = target.split("#", 1)[0]
        served_figure = path.parent == DOCS / "studies" and (ROOT / "studies" / file).is_file()  # hooks/study_figures
        if not (path.parent / file).exists() and not served_figure:
            broken.append(target)
    assert broken == [], f"{doc}: links to missing files: {broken}"


def test_generated_reference_covers_every_command_setting_and_table() -> None:
    import dataclasses

    spec = importlib.util.spec_from_file_location("docs_reference_hook", DOCS / "hooks" / "reference.py")
    assert spec is not None and spec.loader is not None
    hook = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hook)
    cli = hook.cli_markdown()
    for name, _aliases, _help, _parser in hook._subcommands(hook.get_parser()):
        assert f"## wattscale {name}\n" in cli
    config = hook.config_markdown()
    for section, cls in hook._config_classes():
        for field in dataclasses.fields(cls):
            assert f"| `{section}.{field.name}` |" in config
    no_meaning = [line for line in config.splitlines() if re.search(r"\| — \| [^|]+ \|$", line)]
    assert no_meaning == [], "settings without a meaning: give the field a comment in its dataclass"
    assert "| `train.lr` | `float` | `0.003` | `--lr` | peak learning rate" in config
    from wattscale.identity import identity_names

    rows = {line.split(" | ")[0][2:]: line for line in config.splitlines() if line.startswith("| `")}
    for section, cls in hook._config_classes():  # the `run id` column is the identity marks
        for field in dataclasses.fields(cls):
            in_id = not rows[f"`{section}.{field.name}`"].endswith("| no |")
            assert in_id == (field.name in identity_names(cls)), f"{section}.{field.name}: wrong `run id` cell"
    assert rows["`train.lr`"].endswith("| yes |") and rows["`train.threads`"].endswith("| no |")
    assert rows["`train.repeat`"].endswith("| yes, unless `0` |")
    from wattscale.store_schema import metadata

    store = hook.store_markdown()
    for table in metadata.sorted_tables:
        assert f"## `{table.name}`" in store
        for column in table.columns:
            assert f"| `{column.name}` |" in store
    page = hook.on_page_markdown("a\n<!-- generated: store-schema -->\nb", None, None, None)
    assert "generated:" not in page and "## `runs`" in page


# ---- the examples -----------------------------------------------------------------------------------------

def test_every_example_is_runnable_or_says_why_not() -> None:
    problems = []
    for block in all_blocks():
        if block.lang not in RUNNABLE or block.title or block.not_run is not None:
            if block.not_run == "":
                problems.append(f"{block.where}: `not run` needs a reason")
            continue
        if block.lang in ("console", "sh", "shell"):
            problems.append(f"{block.where}: a {block.lang} block is not run; use bash, or mark it not run")
        if block.lang == "bash":
            for line in block.text.splitlines():
                if line.strip() and not line.lstrip().startswith(("wattscale ", "#")):
                    problems.append(f"{block.where}: {line.strip()!r} is not a wattscale command; mark the "
                                    "block <!-- not run: REASON -->")
    assert problems == []


def _store_of(args: list[str]) -> str:
    if "--store" in args:
        return args[args.index("--store") + 1]
    return os.environ.get("WATTSCALE_STORE", "wattscale.db")


def _newest_run_id(store_url: str) -> str:
    from wattscale.store import open_store

    with open_store(store_url, create=False) as store:
        runs = store.list_runs()
    assert runs, f"RUN_ID: no runs in {store_url}"
    return max(runs, key=lambda r: str(r["created_at"]))["run_id"]


def _run_bash(block: Block, run_cli: Any, timings: list[tuple[float, str]]) -> list[str]:
    failures = []
    for line in block.text.splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        expected = EXPECTED_EXIT.search(line)
        args = shlex.split(line, comments=True)[1:]
        if "RUN_ID" in args:
            args = [_newest_run_id(_store_of(args)) if a == "RUN_ID" else a for a in args]
        start = time.perf_counter()
        result = run_cli(*args)
        timings.append((time.perf_counter() - start, f"{block.where}: {line.strip()[:90]}"))
        want = int(expected.group("code")) if expected else 0
        if result.returncode != want:
            failures.append(f"{block.where}: `{line.strip()}` exited {result.returncode}, not {want}: "
                            f"{(result.stderr or result.stdout).strip()[-600:]}")
        elif want == 0 and "--json" in args:
            try:
                json.loads(result.stdout)
            except ValueError as exc:
                failures.append(f"{block.where}: `{line.strip()}` printed no strict JSON ({exc})")
    return failures


@pytest.mark.slow
def test_every_example_in_the_docs_runs(run_cli_in_process: Any, tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    # Links to the shared TinyStories text (experiments/data/) are copied as text; without it they are left out.
    shutil.copytree(ROOT / "experiments", tmp_path / "experiments", ignore_dangling_symlinks=True)
    run_cli_in_process("--version")  # chdir into tmp_path, as every later call does
    failures: list[str] = []
    not_run: list[str] = []
    ran = 0
    timings: list[tuple[float, str]] = []
    for block in all_blocks():
        if block.not_run is not None:
            not_run.append(f"{block.where}: {block.not_run}")
        elif block.title:
            (tmp_path / block.title).write_text(block.text, encoding="utf-8")
        elif block.lang == "bash":
            failures += _run_bash(block, run_cli_in_process, timings)
            ran += 1
        elif block.lang == "python":
            start = time.perf_counter()
            try:
                exec(compile(block.text, block.where, "exec"), {"__name__": "__docs_example__"})
            except Exception as exc:  # noqa: BLE001 - every failing example is reported, not the first only
                failures.append(f"{block.where}: python example raised {type(exc).__name__}: {exc}")
            timings.append((time.perf_counter() - start, f"{block.where}: python"))
            ran += 1
    with capsys.disabled():
        print(f"\ndocs examples: {ran} blocks run, {len(not_run)} not run:\n  " + "\n  ".join(not_run))
        slowest = sorted(timings, reverse=True)[:8]
        print("slowest examples:\n  " + "\n  ".join(f"{s:6.1f} s  {what}" for s, what in slowest))
    assert ran > 0
    assert failures == [], "\n".join(failures)
