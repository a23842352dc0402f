"""The report stage (stages/report.py) on hand-made metrics/plots dirs and on the repository's own."""

from __future__ import annotations

import json

import pytest

from jielong.report import ReportError, Table, Text, to_html, to_markdown
from stages.report import main

from .conftest import REPO

PNG = b"\x89PNG\r\n\x1a\n"

CORPUS = {"docs_in": 100, "docs_out": 70, "removed.read": 0, "removed.url_filter": 10, "removed.language": 5,
          "removed.exact_dedup": 15, "reasons.url_filter.domain": 10, "reasons.language.de": 3,
          "reasons.language.zh": 2, "recall.foreign": 1.0, "pii_recall": 1.0, "good_removed_rate": 0.0,
          "wall_s": 2.5, "docs_per_s_per_core": 40.0}
DECONTAM = {"world_known.items": 50, "world_known.contaminated": 4, "world_known.rate": 0.08,
            "world_known.kept": 46, "planted_leaks": 4, "planted_leaks_recall": 1.0, "false_positives": 0}
EVAL = {
    "base": {"world_facts_mc.acc": 0.8, "world_facts_mc.acc_stderr": 0.01, "world_facts_mc.items": 40,
             "world_unknown.abstain_rate": 0.0, "world_unknown.abstain_rate_stderr": 0.0,
             "world_unknown.hallucination_rate": 0.25, "world_unknown.hallucination_rate_stderr": 0.05,
             "world_known.false_abstain_rate": 0.0, "world_heldout_ppl.word_perplexity": 2.5},
    "sft": {"world_facts_mc.acc": 0.5, "world_facts_mc.acc_stderr": 0.02, "world_facts_mc.items": 40,
            "world_unknown.abstain_rate": 0.9, "world_unknown.abstain_rate_stderr": 0.03,
            "world_unknown.hallucination_rate": 0.05, "world_known.false_abstain_rate": 0.6,
            "world_heldout_ppl.word_perplexity": float("nan")},
}


def write_json(path, obj):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=2, sort_keys=True))  # NaN written as NaN, as Python's json reads it


def write_csv(path, header, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join([",".join(header), *(",".join(map(str, r)) for r in rows)]) + "\n")


@pytest.fixture
def inputs(tmp_path):
    """metrics/ and plots/ of a run where only world, corpus, decontam, pretrain, eval@base and eval@sft ran."""
    metrics, plots = tmp_path / "metrics", tmp_path / "plots"
    write_json(metrics / "world.json", {"pages.good": 60, "pages.foreign": 5, "pages.total": 100})
    write_json(metrics / "corpus.json", CORPUS)
    write_json(metrics / "decontam.json", DECONTAM)
    write_json(metrics / "pretrain.json", {"steps": 20, "tokens": 4096, "train_loss": 2.0, "val_loss": 2.2,
                                           "val_loss_first": 8.0, "tokens_per_s": 1234.5, "mfu": 0.1})
    for model, flat in EVAL.items():
        write_json(metrics / "eval" / f"{model}.json", flat)
    write_csv(plots / "pretrain" / "train.csv", ["step", "loss", "lr"], [(1, 8.0, 0.1), (10, 4.0, 0.1), (20, 2.0, 0.1)])
    write_csv(plots / "pretrain" / "val.csv", ["step", "val_loss"], [(10, 4.5), (20, 2.2)])
    write_csv(plots / "ppo" / "train.csv", ["step", "reward", "gold_reward", "kl"],
              [(1, 0.0, 0.1, 0.0), (2, 0.5, 0.1, 0.2), (3, 1.0, -0.1, 0.5)])
    return tmp_path


def run(root, out="report"):
    main(["--metrics", str(root / "metrics"), "--plots", str(root / "plots"), "--out", str(root / out),
          "--params", str(REPO / "params.yaml")])
    return root / out


def test_funnel_contamination_and_throughput(inputs):
    md = (run(inputs) / "report.md").read_text()
    # steps in pipeline order, documents in and out of each, the reasons beside them
    assert "| read | 100 | 0 | 100 |  |" in md
    assert "| url_filter | 100 | 10 | 90 | domain 10 |" in md
    assert "| language | 90 | 5 | 85 | de 3, zh 2 |" in md
    assert "| exact_dedup | 85 | 15 | 70 |  |" in md
    assert md.index("| url_filter |") < md.index("| language |") < md.index("| exact_dedup |")
    assert "| world_known | 50 | 4 | 0.08 | 46 |" in md
    assert "| pretrain | tokens_per_s | 1234 |" in md and "| corpus | wall_s | 2.5 |" in md


def test_models_side_by_side_with_stderr(inputs):
    md = (run(inputs) / "report.md").read_text()
    assert "| metric | base | sft |" in md
    assert "| world_facts_mc.acc | 0.8 ± 0.01 | 0.5 ± 0.02 |" in md
    assert "| world_facts_mc.items | 40 | 40 |" in md
    assert "| world_heldout_ppl.word_perplexity | 2.5 | nan |" in md  # non-finite shown, not fatal
    assert ("not run: sft-gated (no metrics/eval/sft-gated.json), ppo (no metrics/eval/ppo.json), dpo (no "
            "metrics/eval/dpo.json)") in md
    # hallucination table: one row per model, the ones that did not run say so
    assert "| base | model | 0 ± 0 | 0.25 ± 0.05 | 0 | – |" in md
    assert "| ppo | model | not run | not run | not run | not run |" in md
    assert "| sft-gated | sft + gate | not run |" in md  # a system: the model behind its gate


def test_selective_answering_marks_systems_and_draws_the_frontier(inputs):
    metrics, plots = inputs / "metrics", inputs / "plots"
    gated = {"world_unknown.abstain_rate": 0.95, "world_known.false_abstain_rate": 0.09,
             "world_facts_gen.exact_match": 0.79}
    (metrics / "eval" / "sft-gated.json").write_text(json.dumps(gated))
    (metrics / "gate_fit").mkdir()
    (metrics / "gate_fit" / "sft.json").write_text(json.dumps({
        "threshold": 0.4, "auroc.right.question_logprob_mean": 0.77, "auroc.known.question_logprob_mean": 0.996,
        "auroc.right.calibrator": 0.76}))
    write_csv(plots / "gate_fit" / "sft" / "gate.csv", ["threshold", "abstain_rate", "false_abstain_rate", "exact_match"],
              [(0.0, 0.5, 0.08, 0.8), (0.5, 0.95, 0.09, 0.79), (1.0, 1.0, 1.0, 0.0)])
    write_csv(plots / "gate_fit" / "sft" / "consistency.csv", ["agreement", "abstain_rate", "false_abstain_rate",
                                                                "exact_match"], [(0.5, 0.6, 0.1, 0.8), (1.0, 0.9, 0.5, 0.4)])
    out = run(inputs)
    md = (out / "report.md").read_text()
    assert "| (kind) | model | model | sft + gate |" in md
    assert "| question_logprob_mean | 0.77 / 0.996 |" in md and "| threshold | 0.4 |" in md
    assert "![sft: abstention on never-seen people" in md and (out / "figures" / "frontier_sft.png").exists()


def test_missing_stages_say_not_run(inputs):
    md = (run(inputs) / "report.md").read_text()
    for name in ("tokenizer", "reward", "ppo", "dpo"):
        assert f"not run: no metrics/{name}.json" in md
    assert "| sft | not run |" in md  # training table
    assert "SFT loss: not run (no plots/sft/train.csv:loss, plots/sft/val.csv:val_loss)" in md
    # the PPO curve exists even though metrics/ppo.json does not: each figure needs only its own CSV
    assert "![Proxy and gold reward against KL to the reference](figures/ppo_overoptimisation.png)" in md


def test_figures_and_html(inputs):
    out = run(inputs)
    pngs = sorted(p.name for p in (out / "figures").glob("*.png"))
    assert pngs == ["ppo_overoptimisation.png", "ppo_reward.png", "pretrain_loss.png"]
    assert all((out / "figures" / p).read_bytes().startswith(PNG) for p in pngs)
    page = (out / "report.html").read_text()
    assert page.startswith("<!DOCTYPE html>")
    assert '<img src="figures/pretrain_loss.png"' in page
    assert '<td>world_facts_mc.acc</td><td class="num">0.8 ± 0.01</td>' in page


def test_same_inputs_same_files(inputs):
    a, b = run(inputs, "a"), run(inputs, "b")
    files = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file())
    for f in files:
        assert (a / f).read_bytes() == (b / f).read_bytes(), f


def test_invalid_json_names_the_file(inputs):
    (inputs / "metrics" / "sft.json").write_text('{"steps": 3,')
    with pytest.raises(ReportError, match=r"sft\.json: not valid JSON"):
        run(inputs)
    assert not (inputs / "report").exists()  # nothing half-written


def test_non_number_names_the_key(inputs):
    write_json(inputs / "metrics" / "eval" / "dpo.json", {"world_facts_mc.acc": "high"})
    with pytest.raises(ReportError, match=r"dpo\.json: metric 'world_facts_mc\.acc' is not a number"):
        run(inputs)


def test_renderers_escape():
    blocks = [Text("a < b"), Table(["x|y", "n"], [["<i>", "1"]])]
    assert "| x\\|y | n |" in to_markdown(blocks)
    page = to_html(blocks, "t & t")
    assert "<title>t &amp; t</title>" in page and "<p>a &lt; b</p>" in page and "<td>&lt;i&gt;</td>" in page


def test_repository_metrics(tmp_path):
    """The committed metrics/ and plots/ of the default profile, into a temporary dir."""
    out = tmp_path / "report"
    main(["--metrics", str(REPO / "metrics"), "--plots", str(REPO / "plots"), "--out", str(out),
          "--params", str(REPO / "params.yaml")])
    md = (out / "report.md").read_text()
    models = sorted(p.stem for p in (REPO / "metrics" / "eval").glob("*.json"))
    header = next(line for line in md.splitlines() if line.startswith("| metric | ") and "base" in line)
    assert all(m in header for m in models)
    assert "not run" not in md  # every stage of the default profile has run
    gated = len(list((REPO / "metrics" / "gate_fit").glob("*.json")))
    assert len(list((out / "figures").glob("*.png"))) == 6 + gated  # training curves, a frontier per gated model
