"""README and the guides under docs/: the CI line, the stage list in graph order, links and anchors
that resolve, and every `python -m` command with flags its module's --help knows."""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO

README = REPO / "README.md"
GUIDES = [README, *sorted((REPO / "docs").glob("*.md"))]  # findings.md included: its links must resolve too
COMMAND_PAGES = [p for p in GUIDES if p.name != "findings.md"]  # findings quotes commands of their day
CI_LINE = "bash setup.sh && . .venv/bin/activate && HF_HUB_OFFLINE=1 JIELONG_PROGRESS=0 python -m pytest -q"


def test_readme_holds_the_line_ci_runs_and_stays_a_guide():
    text = README.read_text()
    assert CI_LINE in text.splitlines()
    assert CI_LINE in (REPO / ".ci/run").read_text().splitlines()
    assert len(text.splitlines()) <= 400, "README is the guide: detail goes to a page under docs/"


# ---------------------------------------------------------------- the stage list
def stage_graph() -> dict[str, set[str]]:
    """Stage name (eval expanded to eval@<model>) -> the stages whose outputs it reads, from dvc.yaml."""
    dvc = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    stages: dict[str, dict] = {}
    for name, spec in dvc.items():
        if "foreach" in spec:  # ${eval.models}: a list of names; ${eval.systems}: a dict, ${key} and ${item.<field>}
            items = params
            for part in spec["foreach"].strip("${}").split("."):
                items = items[part]
            for key, item in (items.items() if isinstance(items, dict) else ((i, i) for i in items)):
                text = yaml.safe_dump(spec["do"]).replace("${key}", str(key))
                for field, value in (item.items() if isinstance(item, dict) else [(None, item)]):
                    text = text.replace("${item}" if field is None else f"${{item.{field}}}", str(value))
                stages[f"{name}@{key}"] = yaml.safe_load(text)
        else:
            stages[name] = spec

    def paths(spec, key):
        return [next(iter(o)) if isinstance(o, dict) else o for o in spec.get(key, [])]

    made_by = {out: name for name, spec in stages.items() for key in ("outs", "metrics", "plots")
               for out in paths(spec, key)}
    return {name: {made_by[out] for dep in paths(spec, "deps") for out in made_by
                   if dep == out or dep.startswith(out.rstrip("/") + "/") or out.startswith(dep.rstrip("/") + "/")}
            - {name} for name, spec in stages.items()}


def test_readme_lists_every_stage_in_graph_order():
    section = README.read_text().split("## The pipeline", 1)[1].split("\n## ", 1)[0]
    listed = [n.strip() for item in re.findall(r"^- \*\*(.+?)\*\*", section, re.M) for n in item.split(",")]
    graph = stage_graph()
    assert sorted(listed) == sorted(graph), "README's stage list and dvc.yaml's stages differ"
    for i, name in enumerate(listed):
        later = graph[name] - set(listed[:i])
        assert not later, f"README lists {name} before {sorted(later)}, whose outputs it reads"


# ---------------------------------------------------------------- links and anchors
def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[`*_]{2,}|`", "", heading.strip()).lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)
    seen: dict[str, int] = {}
    out = set()
    for heading in re.findall(r"^#{1,6} (.+)$", text, re.M):
        s = slug(heading)
        out.add(s if s not in seen else f"{s}-{seen[s]}")
        seen[s] = seen.get(s, 0) + 1
    return out


@pytest.mark.parametrize("page", GUIDES, ids=lambda p: p.name)
def test_links_and_anchors_resolve(page):
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)
    broken = []
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"[a-z]+:", target):
            continue  # a URL
        path, _, anchor = target.partition("#")
        file = (page.parent / path).resolve() if path else page
        if not file.exists():
            broken.append(f"{target}: no file {file.relative_to(REPO)}")
        elif anchor and file.suffix == ".md" and anchor not in anchors(file):
            broken.append(f"{target}: no heading with anchor #{anchor} in {file.relative_to(REPO)}")
    assert not broken, f"{page.relative_to(REPO)}: " + "; ".join(broken)


# ---------------------------------------------------------------- commands
def commands(page: Path) -> list[str]:
    """Every `python -m` / `torchrun ... -m` command in a page's code blocks and inline code."""
    text = page.read_text()
    spans = [block.replace("\\\n", " ") for lang, block in re.findall(r"```(\w*)\n(.*?)```", text, re.S)
             if lang in ("", "bash", "console")]
    spans += re.findall(r"`([^`\n]+)`", re.sub(r"```.*?```", "", text, flags=re.S).replace("`\n", "` "))
    found = []
    for span in spans:
        for line in re.sub(r"<[^>\n]*>", "\x00", span).splitlines():  # <git rev | metrics dir>: one word
            found += re.findall(r"(?:python|torchrun)\b[^|;&#\n]*?\s-m\s+([\w.]+[^|;&#\n]*)", line)
    return found


def test_every_command_uses_flags_its_module_knows(capsys):
    bad, checked = [], 0
    for page in COMMAND_PAGES:
        for command in commands(page):
            module, *rest = command.split()
            if not re.fullmatch(r"(stages|jielong|benchmarks)(\.\w+)+", module):
                continue  # pytest, or a pattern such as stages.<name>
            checked += 1
            try:
                main = importlib.import_module(module).main
            except ModuleNotFoundError:
                bad.append(f"{page.name}: {command} (no module {module})")
                continue
            with pytest.raises(SystemExit):
                main(["--help"])
            help_text = capsys.readouterr().out
            for flag in re.findall(r"(?<![\w-])(--[a-z][\w-]*)", " ".join(rest)):
                if not re.search(rf"(?<![\w-]){re.escape(flag)}(?![\w-])", help_text):
                    bad.append(f"{page.name}: {command} ({module} has no {flag})")
    assert checked >= 10, f"found only {checked} commands: has the pattern stopped matching?"
    assert not bad, "\n".join(bad)
