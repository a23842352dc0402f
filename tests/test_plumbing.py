"""Shared plumbing: params validation, atomic writes, expectations, metrics, profiles."""

from __future__ import annotations

import json
import math
import modulefinder
import re
from pathlib import Path

import pandas as pd
import pytest
import yaml

from jielong.checks import ExpectationFailed, expect, gx
from jielong.io import atomic_dir, atomic_file
from jielong.metrics import flatten, write_metrics
from jielong.params import ParamsError, load, load_all
from jielong.profile import apply, merge

from .conftest import REPO, default_params, write_params


def test_repository_params_are_valid():
    load_all(REPO / "params.yaml")


def test_a_knob_missing_from_params_yaml_fails_naming_it(tmp_path):
    # params.yaml is the one home of every value: the code has no default to fall back on
    params = default_params()
    del params["world"]["dirt"]["leaks"], params["ppo"]["kl_coef"]
    p = tmp_path / "params.yaml"
    p.write_text(yaml.safe_dump(params))
    with pytest.raises(ParamsError) as err:
        load("world", p)
    lines = str(err.value).splitlines()
    assert lines == [f"{p}: world.dirt.leaks: missing (params.yaml holds every knob's value)",
                     f"{p}: ppo.kl_coef: missing (params.yaml holds every knob's value)"]


def test_bad_param_names_file_param_and_value(tmp_path):
    p = write_params(tmp_path / "params.yaml", {"world": {"known_people": -3}})
    with pytest.raises(ParamsError) as err:
        load("world", p)
    msg = str(err.value)
    assert str(p) in msg and "world.known_people" in msg and "-3" in msg


@pytest.mark.parametrize("splits, named", [
    ({"sft": 0.25, "rl": 0.3, "eval": 0.5}, r"world.splits: sft \+ rl \+ eval must sum to 1, got 0.25 \+ 0.3 \+ 0.5 = 1.05"),
    ({"sft": 0.5, "rl": 0.0, "eval": 0.5}, r"world.splits.rl: Input should be greater than 0"),
    # 30 never-seen people: 15 eval, round(30 * 0.51) - 15 = 0 sft
    ({"sft": 0.01, "rl": 0.49, "eval": 0.5},
     r"world: splits.sft = 0.01 leaves the sft split of the 30 unknown_people without a person; raise splits.sft or unknown_people"),
])
def test_people_splits_must_sum_to_one_and_leave_no_split_empty(tmp_path, splits, named):
    p = write_params(tmp_path / "params.yaml", {"world": {"splits": splits}})
    with pytest.raises(ParamsError, match=named) as err:
        load("world", p)
    assert str(p) in str(err.value) and "{" not in str(err.value)  # the message, not the whole section


def test_the_old_eval_fraction_is_refused(tmp_path):
    params = default_params()
    params["world"]["eval_fraction"] = 0.5
    p = tmp_path / "params.yaml"
    p.write_text(yaml.safe_dump(params))
    with pytest.raises(ParamsError, match="world.eval_fraction"):
        load("world", p)


def test_unknown_param_is_rejected(tmp_path):
    p = write_params(tmp_path / "params.yaml", {"world": {"known_peeple": 3}})
    with pytest.raises(ParamsError, match="world.known_peeple"):
        load("world", p)


@pytest.mark.parametrize("params, named", [
    ({"corpus": {"inputs": ["data/../../etc/*.warc.gz"]}}, r"corpus.inputs\[0\] = 'data/../../etc/\*.warc.gz'.*traversal"),
    ({"corpus": {"inputs": ["/etc/passwd"]}}, r"corpus.inputs\[0\] = '/etc/passwd' lies outside data_roots"),
    ({"corpus": {"inputs": ["file:///root/crawl.warc"]}}, r"corpus.inputs\[0\].*outside data_roots"),
    ({"corpus": {"inputs": ["database/x.jsonl"]}}, r"'database/x.jsonl' lies outside"),  # a prefix is no parent
    ({"corpus": {"language": {"model": "../lid.bin"}}}, r"corpus.language.model = '../lid.bin'"),
    ({"eval": {"benchmarks": {"arc_easy": "/tmp/arc.jsonl"}}}, r"eval.benchmarks.arc_easy = '/tmp/arc.jsonl'"),
    ({"eval": {"models": ["base", "../../etc"]}}, r"eval.models\[1\] = '../../etc'.*plain name"),
    ({"eval": {"extra_tasks": {"a/b": []}}}, r"eval.extra_tasks.a/b"),
    ({"data_roots": ["data", "../elsewhere"]}, r"data_roots\[1\] = '../elsewhere'"),
])
def test_paths_outside_the_data_roots_are_refused(tmp_path, params, named):
    p = write_params(tmp_path / "params.yaml", params)
    with pytest.raises(ParamsError, match=named) as err:
        load_all(p)
    assert str(p) in str(err.value)


def test_paths_inside_the_data_roots_and_remote_urls_pass(tmp_path):
    p = write_params(tmp_path / "params.yaml", {"data_roots": ["data", str(tmp_path)], "corpus": {"inputs": [
        "data/world/crawl/*.warc.gz", "./data/x.parquet", str(tmp_path / "crawl" / "*.jsonl"),
        "hf://datasets/HuggingFaceFW/fineweb/sample/10BT/*.parquet", "s3://bucket/cc/*.warc.gz"]}})
    assert len(load_all(p).corpus.inputs) == 5


def test_missing_params_file(tmp_path):
    with pytest.raises(ParamsError, match="not found"):
        load("world", tmp_path / "nope.yaml")


def test_atomic_file_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "out.json"
    target.write_text("old")
    with pytest.raises(RuntimeError), atomic_file(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("killed")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"]


def test_atomic_dir_replaces_whole_or_not_at_all(tmp_path):
    target = tmp_path / "d"
    with atomic_dir(target) as tmp:
        (tmp / "a").write_text("1")
    assert (target / "a").read_text() == "1"
    with pytest.raises(RuntimeError), atomic_dir(target) as tmp:
        (tmp / "b").write_text("2")
        raise RuntimeError("killed")
    assert sorted(p.name for p in target.iterdir()) == ["a"]
    with atomic_dir(target) as tmp:
        (tmp / "c").write_text("3")
    assert sorted(p.name for p in target.iterdir()) == ["c"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d"]


def test_expectation_failure_names_artifact_expectation_and_observed_value():
    df = pd.DataFrame({"id": ["a", "b", "b"], "n": [1, 2, 99]})
    with pytest.raises(ExpectationFailed) as err:
        expect("data/x.parquet", df, [
            gx.expectations.ExpectColumnValuesToBeUnique(column="id"),
            gx.expectations.ExpectColumnMaxToBeBetween(column="n", max_value=10),
        ])
    msg = str(err.value)
    assert "data/x.parquet" in msg and "2 expectation(s) failed" in msg
    assert "expect_column_values_to_be_unique" in msg and "'b'" in msg
    assert "expect_column_max_to_be_between" in msg and "99" in msg


def test_expectations_pass_quietly():
    expect("ok", pd.DataFrame({"id": [1, 2]}), [gx.expectations.ExpectColumnValuesToBeUnique(column="id")])


def test_metrics_are_flat_and_finite(tmp_path):
    assert flatten({"removed": {"url": 3, "lang": {"de": 1}}, "ok": True}) == {
        "ok": 1, "removed.lang.de": 1, "removed.url": 3}
    path = tmp_path / "m.json"
    write_metrics(path, {"a": {"b": 1.5}})
    assert json.loads(path.read_text()) == {"a.b": 1.5}
    with pytest.raises(ExpectationFailed, match=r"a\.nan=nan"):
        write_metrics(tmp_path / "bad.json", {"a": {"nan": math.nan}})
    assert not (tmp_path / "bad.json").exists()
    with pytest.raises(TypeError, match="'s'"):
        flatten({"s": "text"})


def test_profiles_merge_and_validate(tmp_path):
    assert merge({"a": {"b": 1, "c": 2}}, {"a": {"b": 5}}) == {"a": {"b": 5, "c": 2}}
    params = tmp_path / "params.yaml"
    params.write_text((REPO / "params.yaml").read_text())
    merged = apply("tiny", params)
    assert load("world", params).known_people == merged["world"]["known_people"] < 200
    with pytest.raises(ParamsError, match="available"):
        apply("nope", params)
    bad = tmp_path / "profiles"
    bad.mkdir()
    (bad / "broken.yaml").write_text("world: {known_people: 0}\n")
    params.write_text((REPO / "params.yaml").read_text())
    with pytest.raises(Exception, match="known_people"):
        apply("broken", params, profiles=bad)
    # 3 never-seen people: 2 eval, none left for sft at the default shares
    (bad / "few.yaml").write_text("world: {unknown_people: 3}\n")
    with pytest.raises(ParamsError, match="splits.sft = 0.25 leaves the sft split of the 3 unknown_people without"):
        apply("few", params, profiles=bad)


@pytest.mark.parametrize("profile", sorted(p.stem for p in (REPO / "profiles").glob("*.yaml")))
def test_every_shipped_profile_applies_and_changes_something(tmp_path, profile):
    params = tmp_path / "params.yaml"
    params.write_text((REPO / "params.yaml").read_text())
    default = yaml.safe_load(params.read_text())
    merged = apply(profile, params)  # validates, or raises naming the bad knob
    assert merged != default
    world = load("world", params)
    assert world.known_people == merged["world"]["known_people"]
    for n in (world.known_people, world.unknown_people):  # every split of every group has people
        assert min(world.splits.sizes(n).values()) >= 1


def test_every_torch_load_is_weights_only_and_nothing_unpickles():
    """No code path of ours deserialises a pickle: torch.load only with weights_only=True, no pickle module,
    no trust_remote_code. Checked on the syntax tree, so comments and strings do not count."""
    import ast

    offenders = []
    for path in sorted(p for d in ("jielong", "stages", "evals", "benchmarks") for p in (REPO / d).rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            where = f"{path.relative_to(REPO)}:{getattr(node, 'lineno', '?')}"
            if isinstance(node, ast.Call):
                name = ast.unparse(node.func)
                kwargs = {k.arg: k.value for k in node.keywords}
                if name.endswith("torch.load") or name == "load" and "weights_only" in kwargs:
                    flag = kwargs.get("weights_only")
                    if not (isinstance(flag, ast.Constant) and flag.value is True):
                        offenders.append(f"{where}: {ast.unparse(node)}")
                if isinstance(kwargs.get("trust_remote_code"), ast.Constant) and kwargs["trust_remote_code"].value:
                    offenders.append(f"{where}: remote code trusted (trust_remote_code)")
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                names = [a.name for a in node.names] + [getattr(node, "module", None) or ""]
                if any(n.split(".")[0] in ("pickle", "dill", "cloudpickle", "joblib") for n in names):
                    offenders.append(f"{where}: imports {names}")
    assert not offenders, "\n".join(offenders)


# Imported by every stage and deliberately no stage's dependency (dvc.yaml's first comment): a new params
# section or a new expectation must not re-run the crawl. Everything else a stage imports is its code.
PLUMBING = {"jielong/params.py", "jielong/io.py", "jielong/checks.py", "jielong/metrics.py", "jielong/log.py"}
# modules a stage imports by name (importlib) on one path only: stages/eval.py loads the systems' wrappers
# for eval_system@<name> alone, so that changing a wrapper re-runs no model's eval
IMPORTED_BY_NAME = {"eval_system": ["jielong/systems.py"]}


@pytest.mark.parametrize("pipeline", ["dvc.yaml", "finetune/dvc.yaml"])
def test_every_stage_depends_on_the_code_it_imports(pipeline):
    # stdlib's modulefinder, searching the repository alone: it follows every import of the stage's
    # script (inside functions too) into our own modules and stops at third-party ones
    stages = yaml.safe_load((REPO / pipeline).read_text())["stages"]
    missing = {}
    for name, stage in stages.items():
        stage = stage.get("do", stage)  # foreach stages (eval)
        module = re.search(r"python -m (stages\.\w+)", stage["cmd"])
        if module is None:
            continue
        finder = modulefinder.ModuleFinder(path=[str(REPO)])
        for script in [module[1].replace(".", "/") + ".py", *IMPORTED_BY_NAME.get(name, [])]:
            finder.run_script(str(REPO / script))
        code = {Path(m.__file__).resolve().relative_to(REPO).as_posix() for m in finder.modules.values() if m.__file__}
        deps = [d.rstrip("/") for d in stage["deps"]]  # yaml drops the comments
        missing[name] = sorted(f for f in code - PLUMBING if not f.endswith("__init__.py")
                               and not any(f == d or f.startswith(d + "/") for d in deps))
    missing = {name: files for name, files in missing.items() if files}
    assert not missing, f"{pipeline}: stages import code their deps do not list: {missing}"


def test_a_second_profile_is_refused_unless_stacked(tmp_path, capsys):
    """`profile gpu` after `profile large` kept large's values wherever gpu is silent, under a header
    saying gpu was applied over the default params; now it is refused, or stacked and said so."""
    from jielong.profile import applied, main

    params = tmp_path / "params.yaml"
    params.write_text((REPO / "params.yaml").read_text())
    assert applied(params) is None
    apply("large", params)
    assert applied(params) == "large"
    with pytest.raises(ParamsError, match="already holds the 'large' profile.*git checkout"):
        apply("gpu", params)
    with pytest.raises(SystemExit, match="already holds"):
        main(["gpu", "--params", str(params)])
    with pytest.raises(SystemExit, match="available: .*tiny"):
        main(["nope", "--params", str(params)])
    merged = apply("gpu", params, stack=True)
    assert merged["world"]["full_name_fraction"] == yaml.safe_load((REPO / "profiles/large.yaml").read_text())[
        "world"]["full_name_fraction"]
    assert params.read_text().startswith("# profile: gpu over large (from gpu.yaml over the large profile)")


def test_jielong_progress_0_quiets_the_hugging_face_bars(monkeypatch):
    """transformers' "Loading weights" bar printed in every stage's log under JIELONG_PROGRESS=0."""
    import importlib

    import datasets
    import transformers

    from jielong.log import quiet_libraries

    # datasets read its switch on import, and an earlier get_logger has set it; it would veto enabling
    monkeypatch.setattr(importlib.import_module("datasets.utils.tqdm"), "HF_DATASETS_DISABLE_PROGRESS_BARS", None)
    for switch in ("HF_HUB_DISABLE_PROGRESS_BARS", "HF_DATASETS_DISABLE_PROGRESS_BARS"):
        monkeypatch.setenv(switch, "")  # restored afterwards, whatever quiet_libraries writes in between
        monkeypatch.delenv(switch)
    transformers.utils.logging.enable_progress_bar()
    datasets.enable_progress_bars()
    try:
        monkeypatch.setenv("JIELONG_PROGRESS", "1")
        quiet_libraries()
        assert transformers.utils.logging.is_progress_bar_enabled() and datasets.is_progress_bar_enabled()
        monkeypatch.setenv("JIELONG_PROGRESS", "0")
        quiet_libraries()
        assert not transformers.utils.logging.is_progress_bar_enabled()
        assert not datasets.is_progress_bar_enabled()
    finally:  # the rest of the suite runs with JIELONG_PROGRESS=0 (conftest), so quiet is its state
        transformers.utils.logging.disable_progress_bar()
        datasets.disable_progress_bars()


STAGE_SCRIPTS = sorted(p.stem for p in (REPO / "stages").glob("*.py") if p.stem != "__init__")


@pytest.mark.parametrize("stage", STAGE_SCRIPTS)
def test_every_stage_tells_how_it_is_run(stage, capsys):
    """`--help` opens with the command README gives (`python -m stages.<name>`), not the file name."""
    import importlib

    with pytest.raises(SystemExit) as done:
        importlib.import_module(f"stages.{stage}").main(["--help"])
    assert done.value.code == 0
    assert capsys.readouterr().out.startswith(f"usage: python -m stages.{stage} ")


@pytest.mark.parametrize("stage", STAGE_SCRIPTS)
def test_every_stage_ends_through_the_fast_exit(stage):
    assert (REPO / "stages" / f"{stage}.py").read_text().rstrip().endswith('if __name__ == "__main__":\n    run(main)')


RUN_SCRIPT = """
import atexit, sys, threading, time
from pathlib import Path
from jielong.log import run

out = Path(sys.argv[1])
def main():
    atexit.register(lambda: (out / "atexit").write_text("ran"))
    sys.stdout.write("buffered, no newline")  # a pipe's stdout is block-buffered: only a flush shows it
    if sys.argv[2] == "raise":
        raise ValueError("bad input")
    if sys.argv[2] == "thread":  # a normal exit waits for a non-daemon thread; so must run()
        threading.Thread(target=lambda: (time.sleep(0.5), (out / "thread").write_text("done"))).start()
    return "ignored: a stage's return value is not its exit status"
run(main)
(out / "after").write_text("main returned and the process went on")
"""


@pytest.mark.parametrize("how", ["return", "raise", "thread"])
def test_run_ends_the_process_after_main_as_a_normal_exit_would(tmp_path, how):
    """jielong.log.run skips the interpreter's teardown, never what a normal exit does first: atexit
    handlers, flushed streams, a failure's traceback and status, a non-daemon thread's work."""
    import os
    import subprocess
    import sys

    buffered = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
    proc = subprocess.run([sys.executable, "-c", RUN_SCRIPT, str(tmp_path), how], capture_output=True, text=True,
                          cwd=REPO, env=buffered)
    assert proc.stdout == "buffered, no newline"
    assert (tmp_path / "atexit").read_text() == "ran"
    if how == "raise":
        assert proc.returncode == 1 and "ValueError: bad input" in proc.stderr
    else:
        assert proc.returncode == 0, proc.stderr
    # os._exit after a plain return: nothing after run() executes; with a thread still running, run()
    # returns and the interpreter ends normally, the thread's file written
    assert (tmp_path / "after").exists() == (how == "thread")
    assert (tmp_path / "thread").exists() == (how == "thread")


def test_the_test_file_order_names_files_that_exist():
    """conftest's FILE_ORDER decides which worker builds the tiny repo and how the two end together; a
    renamed file would silently fall to the end of the order."""
    from .conftest import FILE_ORDER

    assert {name for name in FILE_ORDER if not (REPO / "tests" / name).is_file()} == set()
