"""The report card: every stage's numbers in one Markdown page and its HTML twin.

    python -m stages.report --metrics metrics --plots plots --out report

Reads only metrics/ (the flat JSON every stage writes) and plots/ (the curves), never a model or a
data set, so it runs in a second and can be rebuilt for any commit. Writes report/report.md,
report/report.html (open it from disk; its pictures are report/figures/*.png) in this order:

    the corpus funnel        crawl pages by kind, documents in/out of every step and why they left
    contamination            per eval task: items, contaminated, kept; planted leaks caught
    the tokenizer            vocabulary, bytes per token, speed next to tiktoken
    training                 headline numbers and curves of pretrain, sft, reward, dpo, kto, ppo, grpo
    evaluation               every model's and system's metrics side by side, `value ± stderr`
    hallucination            per model: abstains on unknown people, hallucinates, abstains on known
    selective answering      per gated model: the frontier of abstention on never-seen people against
                             refusal of known facts (model alone, its gate, self-consistency), signal AUROCs
    alignment                the judged on-policy samples; pairwise accuracy per kind; PPO, DPO, KTO and
                             GRPO before and after; proxy and gold reward against KL; every aligned
                             model against SFT item by item (paired difference and its standard error)
    throughput               tokens/s, MB/s, MFU, ... of every stage

A stage that has not run (its metrics file or curve is absent: the tiny profile, a subset of
eval.models) shows "not run"; a metrics file that is not flat JSON numbers fails the stage, naming
the file and the key. The output holds no timestamps: the same inputs give the same files.
"""

from __future__ import annotations

import argparse
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from jielong.io import atomic_dir
from jielong.log import get_logger, run
from jielong.params import load_all
from jielong.report import (
    Block,
    Heading,
    Image,
    Line,
    Metrics,
    ReportError,
    Table,
    Text,
    draw,
    number,
    read_column,
    read_metrics,
    to_html,
    to_markdown,
    with_stderr,
)

log = get_logger("report")

STAGES = ("world", "corpus", "decontam", "tokenizer", "pretrain", "sft", "samples", "reward", "ppo", "dpo", "kto",
          "grpo")
# stages the default run leaves out (their params list no model): absent, they are "off", not "not run"
OPTIONAL = {"kto": "kto.models", "grpo": "grpo.models"}
# the corpus pipeline's steps in the order documents pass them (stages/corpus.py); metrics sort them by name
FUNNEL_STEPS = ("read", "url_filter", "extract", "language", "gopher_repetition", "gopher_quality", "c4",
                "fineweb", "pii", "exact_dedup", "near_dedup")


# ---------------------------------------------------------------- inputs
@dataclass(frozen=True)
class Inputs:
    metrics_dir: Path
    plots_dir: Path
    stages: dict[str, Metrics]  # stage name -> its metrics; a stage that has not run is absent
    evals: dict[str, Metrics]  # model -> metrics/eval/<model>.json
    models: list[str]  # eval columns: params' report.models, then any other model with a file
    items: dict[str, dict]  # model -> metrics/items/<model>.json: task -> metric -> item -> value
    systems: dict[str, tuple[str, str]] = field(default_factory=dict)  # system (eval.systems) -> (model, wrapper)
    gates: dict[str, Metrics] = field(default_factory=dict)  # model -> metrics/gate_fit/<model>.json

    def where(self, *parts: str) -> str:
        """A path as the reader knows it (metrics/ppo.json), whatever directory the report read."""
        return "/".join((self.metrics_dir.name, *parts))


def read_inputs(metrics_dir: Path, plots_dir: Path, models: tuple[str, ...] | list[str],
                systems: dict[str, tuple[str, str]] | None = None) -> Inputs:
    # Every file is read up front, so a broken one fails the stage before anything is written.
    stages = {s: m for s in STAGES if (m := read_metrics(metrics_dir / f"{s}.json")) is not None}
    files = sorted((metrics_dir / "eval").glob("*.json"))
    evals = {f.stem: read_metrics(f) for f in files}
    order = [*models, *sorted(set(evals) - set(models))]
    items = {f.stem: json.loads(f.read_text()) for f in sorted((metrics_dir / "items").glob("*.json"))}
    gates = {f.stem: read_metrics(f) for f in sorted((metrics_dir / "gate_fit").glob("*.json"))}
    return Inputs(metrics_dir, plots_dir, stages, evals, order, items, dict(systems or {}), gates)


def kind(inp: Inputs, name: str) -> str:
    """What an eval column is: a model, or a system (a model with a wrapper at answer time)."""
    return " + ".join(inp.systems[name]) if name in inp.systems else "model"


def not_run(what: str) -> Text:
    return Text(f"not run: no {what}")


def is_off(inp: Inputs, stage: str) -> bool:
    return stage in OPTIONAL and stage not in inp.stages


def off(stage: str) -> Text:
    return Text(f"off in this run ({OPTIONAL[stage]} is empty; profiles/methods.yaml turns it on)")


def key_value_table(m: Metrics, keys: list[str], digits: int, header=("metric", "value")) -> Table:
    return Table(list(header), [[k, number(m[k], digits)] for k in keys if k in m])


# ---------------------------------------------------------------- corpus funnel
def funnel_section(inp: Inputs, digits: int) -> list[Block]:
    blocks: list[Block] = [Heading("Corpus funnel")]
    world = inp.stages.get("world")
    if world is None:
        blocks.append(not_run(inp.where("world.json")))
    else:
        kinds = sorted(k for k in world if k.startswith("pages.") and k != "pages.total")
        rows = [[k.removeprefix("pages."), number(world[k])] for k in kinds]
        rows.append(["total", number(world.get("pages.total"))])
        blocks += [Text(f"What the generated crawl holds ({inp.where('world.json')}): pages by kind."),
                   Table(["kind", "pages"], rows)]

    corpus = inp.stages.get("corpus")
    if corpus is None:
        return [*blocks, not_run(inp.where("corpus.json"))]
    removed = {k.removeprefix("removed."): v for k, v in corpus.items() if k.startswith("removed.")}
    steps = [s for s in FUNNEL_STEPS if s in removed] + sorted(set(removed) - set(FUNNEL_STEPS))
    left, rows = corpus.get("docs_in", 0), []
    for step in steps:
        prefix = f"reasons.{step}."
        why = ", ".join(f"{k.removeprefix(prefix)} {number(v)}" for k, v in sorted(corpus.items())
                        if k.startswith(prefix))
        rows.append([step, number(left), number(removed[step]), number(left - removed[step]), why])
        left -= removed[step]
    rows.append(["documents out", "", "", number(corpus.get("docs_out")), ""])
    blocks += [Text("Documents into and out of every step of the datatrove pipeline, with the reasons "
                    f"the filters gave ({inp.where('corpus.json')})."),
               Table(["step", "in", "removed", "out", "reasons"], rows, text=(0, 4))]
    caught = sorted(k for k in corpus if k.startswith("recall.")) + ["pii_recall", "good_removed_rate"]
    blocks += [Text("Against the world's ground truth: the share of each planted kind of dirt removed, "
                    "PII values scrubbed, and good pages lost."),
               key_value_table(corpus, caught, digits)]
    return blocks


# ---------------------------------------------------------------- contamination, tokenizer
def contamination_section(inp: Inputs, digits: int) -> list[Block]:
    blocks: list[Block] = [Heading("Contamination")]
    d = inp.stages.get("decontam")
    if d is None:
        return [*blocks, not_run(inp.where("decontam.json"))]
    tasks = sorted(k.removesuffix(".items") for k in d if k.endswith(".items"))
    rows = [[t, number(d.get(f"{t}.items")), number(d.get(f"{t}.contaminated")),
             number(d.get(f"{t}.rate"), digits), number(d.get(f"{t}.kept"))] for t in tasks]
    blocks += [Text("Evaluation items sharing n-grams with a corpus document, per task; contaminated "
                    "items are dropped (or flagged) before evaluation."),
               Table(["task", "items", "contaminated", "rate", "kept"], rows),
               key_value_table(d, ["planted_leaks", "planted_leaks_recall", "false_positives",
                                   "corpus.docs", "corpus.contaminating_docs", "corpus.removed_docs"], digits)]
    return blocks


def tokenizer_section(inp: Inputs, digits: int) -> list[Block]:
    t = inp.stages.get("tokenizer")
    if t is None:
        return [Heading("Tokenizer"), not_run(inp.where("tokenizer.json"))]
    return [Heading("Tokenizer"), key_value_table(t, sorted(t), digits)]


# ---------------------------------------------------------------- training curves
@dataclass(frozen=True)
class Curve:
    name: str  # figures/<name>.png
    title: str
    lines: tuple[Line, ...]
    ylabel: str
    xlabel: str = "step"
    logy: bool = False


CURVES = (
    Curve("pretrain_loss", "Pretraining loss", (Line("pretrain/train.csv", "loss", "train"),
                                                Line("pretrain/val.csv", "val_loss", "validation")),
          "loss", logy=True),
    Curve("sft_loss", "SFT loss", (Line("sft/train.csv", "loss", "train"),
                                   Line("sft/val.csv", "val_loss", "validation")), "loss", logy=True),
    Curve("reward_accuracy", "Reward model pairwise accuracy",
          (Line("reward/train.csv", "accuracy", "train batch"),
           Line("reward/val.csv", "val_accuracy", "validation")), "accuracy"),
    Curve("dpo_loss", "DPO loss", (Line("dpo/train.csv", "loss", "train"),
                                   Line("dpo/val.csv", "val_loss", "validation")), "loss"),
    Curve("kto_loss", "KTO loss", (Line("kto/train.csv", "loss", "train"),
                                   Line("kto/val.csv", "val_loss", "validation")), "loss"),
    Curve("ppo_reward", "PPO reward per iteration",
          (Line("ppo/train.csv", "reward", "proxy (reward model)"),
           Line("ppo/train.csv", "gold_reward", "gold (ground truth)")), "reward", xlabel="iteration"),
)
OVEROPTIMISATION = Curve(
    "ppo_overoptimisation", "Proxy and gold reward against KL to the reference",
    (Line("ppo/train.csv", "reward", "proxy (reward model)", x="kl", points=True),
     Line("ppo/train.csv", "gold_reward", "gold (ground truth)", x="kl", points=True)), "reward",
    xlabel="KL to the reference (per iteration)")
GRPO_CURVE = Curve(
    "grpo_reward", "GRPO: proxy and gold reward of each step's replies against KL to the reference",
    (Line("grpo/train.csv", "reward_model", "proxy (reward model)", x="kl_per_token", points=True),
     Line("grpo/train.csv", "gold_reward", "gold (ground truth)", x="kl_per_token", points=True)), "reward",
    xlabel="KL to the reference (per token, per step)")


def figure(curve: Curve, inp: Inputs, figures: Path, dpi: int) -> Block:
    """The curve drawn into figures/<name>.png, or "not run" when none of its CSVs or columns exist."""
    found, missing = [], []
    for line in curve.lines:
        xy = read_column(inp.plots_dir / line.csv, line.x, line.y)
        if xy is None:
            missing.append(f"{inp.plots_dir.name}/{line.csv}:{line.y}")
        else:
            found.append((line, *xy))
    if not found:
        return Text(f"{curve.title}: not run (no {', '.join(missing)})")
    draw(figures / f"{curve.name}.png", curve.title, found, curve.xlabel, curve.ylabel, dpi, curve.logy)
    caption = curve.title + (f" (not run: {', '.join(missing)})" if missing else "")
    return Image(f"figures/{curve.name}.png", caption)


def training_section(inp: Inputs, figures: Path, digits: int, dpi: int) -> list[Block]:
    rows = []
    for stage in ("pretrain", "sft", "reward", "dpo", "kto", "grpo"):
        m = inp.stages.get(stage)
        if m is None:
            rows.append([stage, "off" if is_off(inp, stage) else "not run", "", "", "", ""])
            continue
        rows.append([stage, *(number(m.get(k), digits) for k in
                              ("steps", "tokens", "train_loss", "val_loss_first", "val_loss"))])
    return [Heading("Training"),
            Text("Final training loss, and validation loss before the first step and after the last."),
            Table(["stage", "steps", "tokens", "train loss", "val loss at start", "val loss at end"], rows),
            *(figure(c, inp, figures, dpi) for c in CURVES if not is_off(inp, c.lines[0].csv.split("/")[0]))]


# ---------------------------------------------------------------- evaluation, hallucination
def eval_section(inp: Inputs, digits: int) -> list[Block]:
    blocks: list[Block] = [Heading("Evaluation")]
    ran = [m for m in inp.models if m in inp.evals]
    skipped = [m for m in inp.models if m not in inp.evals]
    if not ran:
        return [*blocks, not_run(inp.where("eval", "<model>.json"))]
    keys = sorted({k for m in ran for k in inp.evals[m] if not k.endswith("_stderr")})
    rows = [["(kind)", *(kind(inp, m) for m in ran)]]
    rows += [[k, *(with_stderr(inp.evals[m], k, digits) for m in ran)] for k in keys]
    blocks += [Text("Every model's lm-eval metrics side by side (value ± stderr where the task reports one; "
                    ".items is the number of items scored). A column of kind \"<model> + gate\" is a system: the "
                    "model behind its gate, which says \"I do not know\" where the model's own likelihoods show it "
                    "does not know (params eval.systems); its likelihood tasks are the model's own."),
               Table(["metric", *ran], rows)]
    if skipped:
        blocks.append(Text("not run: " + ", ".join(f"{m} (no {inp.where('eval', m + '.json')})" for m in skipped)))
    return blocks


HALLUCINATION = (("abstains on unknown people", "world_unknown.abstain_rate"),
                 ("hallucinates on unknown people", "world_unknown.hallucination_rate"),
                 ("abstains on known people", "world_known.false_abstain_rate"),
                 ("gold reward", "gold_reward.mean"))


def hallucination_section(inp: Inputs, digits: int) -> list[Block]:
    rows = []
    for model in inp.models:
        m = inp.evals.get(model)
        rows.append([model, kind(inp, model),
                     *(with_stderr(m, k, digits) if m else "not run" for _, k in HALLUCINATION)])
    return [Heading("Hallucination"),
            Text("Asked about people the corpus never mentions, a model should say it does not know; "
                 "asked about people it saw, it should answer. A row of kind \"<model> + gate\" is the model "
                 "behind its gate, the others a model alone."),
            Table(["model", "kind", *(label for label, _ in HALLUCINATION)], rows, text=(0, 1))]


# ---------------------------------------------------------------- selective answering
def frontier_figure(inp: Inputs, model: str, figures: Path, dpi: int) -> Block:
    """Abstention on never-seen people against refusal of known facts (evaluation people): the model alone
    (a point), its gate as the threshold moves and self-consistency decoding as the agreement moves (curves),
    and the model behind its gate as evaluated (a point)."""
    lines = []
    for csv, label, points in ((f"gate_fit/{model}/gate.csv", "gate, threshold 0..1", False),
                               (f"gate_fit/{model}/consistency.csv", "self-consistency, agreement 1/k..1", True)):
        xy = read_column(inp.plots_dir / csv, "false_abstain_rate", "abstain_rate")
        if xy is not None:
            lines.append((Line(csv, "abstain_rate", label, x="false_abstain_rate", points=points), *xy))
    evaluated = [(model, "model alone")] + [(s, f"{s} (evaluated)") for s, (m, _) in inp.systems.items() if m == model]
    for name, label in evaluated:
        m = inp.evals.get(name)
        if m and "world_known.false_abstain_rate" in m and "world_unknown.abstain_rate" in m:
            lines.append((Line("", "", label, points=True), [m["world_known.false_abstain_rate"]],
                          [m["world_unknown.abstain_rate"]]))
    if not lines:
        return Text(f"{model}: not run (no {inp.plots_dir.name}/gate_fit/{model}/ and no eval metrics)")
    draw(figures / f"frontier_{model}.png", f"{model}: abstention frontier (evaluation people)", lines,
         "known facts refused (world_known.false_abstain_rate)", "never-seen people abstained on", dpi)
    return Image(f"figures/frontier_{model}.png", f"{model}: abstention on never-seen people against refusal of "
                 "known facts; the model alone is one point, its gate a curve, self-consistency decoding another")


def selective_section(inp: Inputs, figures: Path, digits: int, dpi: int) -> list[Block]:
    blocks: list[Block] = [Heading("Selective answering")]
    if not inp.gates:
        return [*blocks, not_run(inp.where("gate_fit", "<model>.json"))]
    signals = sorted({k.removeprefix("auroc.right.") for g in inp.gates.values() for k in g
                      if k.startswith("auroc.right.")})
    rows = [[s, *(f"{number(g.get(f'auroc.right.{s}'), digits)} / {number(g.get(f'auroc.known.{s}'), digits)}"
                  for g in inp.gates.values())] for s in signals]
    rows.append(["threshold", *(number(g.get("threshold"), digits) for g in inp.gates.values())])
    blocks += [Text("Each model's gate (stages/gate_fit.py) turns its own likelihoods of a question and its reply "
                    "into P(the reply is right), fitted on the sft and rl people's questions; below the threshold "
                    "the system says \"I do not know.\". Each signal's AUROC on the evaluation people, for a right "
                    "reply among the replies that are not abstentions / for a known person among all questions "
                    f"({inp.where('gate_fit', '<model>.json')}); the calibrator reads only the signals params "
                    "selective.signals names."),
               Table(["signal", *inp.gates], rows)]
    blocks += [frontier_figure(inp, model, figures, dpi) for model in inp.gates]
    return blocks


# ---------------------------------------------------------------- reward, PPO, DPO
def before_after(m: Metrics, rows: list[tuple[str, str, str]], digits: int, after: str) -> Table:
    """Rows of (label, key before, key after): the SFT model's value next to the tuned model's."""
    return Table(["metric", "SFT", after], [[label, number(m.get(b), digits), number(m.get(a), digits)]
                                             for label, b, a in rows])


def samples_blocks(inp: Inputs, digits: int) -> list[Block]:
    m = inp.stages.get("samples")
    if m is None:
        return [Heading("Judged on-policy samples", 3), not_run(inp.where("samples.json"))]
    shares = sorted(k for k in m if k.startswith(("known.", "unknown.")))
    return [Heading("Judged on-policy samples", 3),
            Text("The SFT policy's sampled replies to rl people's questions, as the judge scored them: the "
                 "share of replies per outcome and person kind, the pairs made of them, and with a model "
                 "judge (RLAIF) how often it orders two replies as the world's truth does."),
            key_value_table(m, [*shares, "samples", "pairs", "pairs_on_policy", "judge_agreement", "judge_pairs"],
                            digits)]


# the eval metrics an aligned model is held to against SFT, item by item (metrics/items/<model>.json)
PAIRED = (("gold reward", "gold_reward", "mean"), ("exact match", "world_facts_gen", "exact_match"),
          ("abstains on unknown people", "world_unknown", "abstain_rate"),
          ("abstains on known people", "world_known", "false_abstain_rate"))


def paired_difference(base: dict, cur: dict) -> tuple[float, float, int] | None:
    """(mean of cur - base over the items both scored, its standard error, items), or None."""
    shared = sorted(set(base) & set(cur))
    if len(shared) < 2:
        return None
    d = [cur[i] - base[i] for i in shared]
    mean = sum(d) / len(d)
    sd = math.sqrt(sum((x - mean) ** 2 for x in d) / (len(d) - 1))
    return mean, sd / math.sqrt(len(d)), len(d)


def against_sft(inp: Inputs, digits: int) -> list[Block]:
    sft = inp.items.get("sft")
    models = [m for m in inp.models if m not in ("base", "sft") and m in inp.items]
    if sft is None or not models:
        return [Heading("Against SFT, item by item", 3), not_run(inp.where("items", "sft.json") + " and an aligned model's")]
    rows = []
    for model in models:
        row = [model]
        for _, task, metric in PAIRED:
            got = paired_difference(sft.get(task, {}).get(metric, {}), inp.items[model].get(task, {}).get(metric, {}))
            row.append("" if got is None else f"{number(got[0], digits)} ± {number(got[1], digits)}")
        rows.append(row)
    return [Heading("Against SFT, item by item", 3),
            Text("Each aligned model minus the SFT model on the same evaluation items (evaluation people): the "
                 "mean paired difference ± its standard error. A difference within about two standard errors "
                 "of zero is noise."),
            Table(["model", *(label for label, _, _ in PAIRED)], rows)]


BON_KEYS = ("gold_reward", "exact_match", "abstain_rate", "hallucination_rate", "reward_model")


def bon_blocks(inp: Inputs, figures: Path, digits: int, dpi: int) -> list[Block]:
    """Best-of-N's sweep per policy (metrics/bon/<model>.json, plots/bon/<model>.csv)."""
    files = sorted((inp.metrics_dir / "bon").glob("*.json"))
    blocks: list[Block] = [Heading("Best-of-N with the reward model", 3)]
    if not files:
        return [*blocks, Text("off in this run (bon.models is empty; profiles/methods.yaml turns it on)")]
    blocks.append(Text("The policy samples N replies to each evaluation question and the reward model's favourite "
                       "is the answer: the world's gold reward, exact match on known people and abstention and "
                       "hallucination on never-seen people of that choice, and the reward model's own score of it "
                       "(the proxy). A proxy that rises while the gold reward falls is over-optimisation at "
                       "answer time."))
    for path in files:
        m = read_metrics(path)
        ns = sorted(int(k.split(".")[0][1:]) for k in m if k.endswith(".gold_reward"))
        blocks.append(Table(["N", *BON_KEYS], [[str(n), *(number(m.get(f"n{n}.{k}"), digits) for k in BON_KEYS)]
                                               for n in ns]))
        csv = f"bon/{path.stem}.csv"
        blocks.append(figure(Curve(f"bon_{path.stem}", f"Best-of-N of {path.stem} against N",
                                   tuple(Line(csv, k, k.replace("_", " "), x="n", points=False)
                                         for k in ("gold_reward", "exact_match", "reward_model")),
                                   "value", xlabel="N (replies sampled, the reward model picks one)"),
                             inp, figures, dpi))
    return blocks


def alignment_section(inp: Inputs, figures: Path, digits: int, dpi: int) -> list[Block]:
    blocks: list[Block] = [Heading("Alignment"), *samples_blocks(inp, digits), Heading("Reward model", 3)]
    r = inp.stages.get("reward")
    if r is None:
        blocks.append(not_run(inp.where("reward.json")))
    else:
        kinds = sorted(k for k in r if k.startswith("pairwise_acc."))
        blocks += [Text("Share of held-out preference pairs the reward model ranks right, overall and per "
                        "kind of rejected reply."),
                   key_value_table(r, ["pairwise_acc", *kinds, "margin_mean", "reward.chosen_mean",
                                       "reward.rejected_mean"], digits)]
    blocks.append(Heading("PPO", 3))
    p = inp.stages.get("ppo")
    if p is None:
        blocks.append(not_run(inp.where("ppo.json")))
    else:
        blocks += [Text("Held-out rl-split prompts, answered by the SFT model and by the PPO policy."),
                   before_after(p, [("proxy reward (reward model)", "sft.reward_mean", "reward_mean"),
                                    ("gold reward", "sft.gold_reward", "gold_reward"),
                                    ("response length", "sft.response_len", "response_len")], digits, "PPO"),
                   key_value_table(p, ["kl", "kl_coef", "no_eos_frac", "iterations", "rollouts"], digits)]
    blocks += [Text("Over-optimisation shows as a proxy reward that keeps rising with KL to the reference "
                    "while the gold reward, never trained on, stalls or falls."),
               figure(OVEROPTIMISATION, inp, figures, dpi)]
    for stage, label, keys in (("dpo", "DPO", ["val_accuracy", "val_margin", "val_loss"]),
                               ("kto", "KTO", ["val_margin", "val_kl", "val_loss", "labels", "labels_good"]),
                               ("grpo", "GRPO", ["train.reward_model", "train.gold_reward", "train.kl_per_token",
                                                 "steps", "replies"])):
        blocks.append(Heading(label, 3))
        m = inp.stages.get(stage)
        if m is None:
            blocks.append(off(stage) if is_off(inp, stage) else not_run(inp.where(f"{stage}.json")))
            continue
        blocks += [Text(f"Gold reward of greedy answers to held-out rl people's questions before (SFT) and after "
                        f"{label}; the stage's own training numbers."),
                   before_after(m, [("gold reward", "gold_reward_sft", "gold_reward")], digits, label),
                   key_value_table(m, keys, digits)]
        if stage == "grpo":
            blocks.append(figure(GRPO_CURVE, inp, figures, dpi))
    return [*blocks, *bon_blocks(inp, figures, digits, dpi), *against_sft(inp, digits)]


# ---------------------------------------------------------------- throughput
def is_speed(key: str) -> bool:
    return key.endswith("_per_s") or "_per_s_" in key or key in ("mfu", "wall_s", "train_s", "encode_vs_tiktoken")


def throughput_section(inp: Inputs, digits: int) -> list[Block]:
    rows = [[stage, key, number(m[key], digits)] for stage, m in inp.stages.items()
            for key in sorted(m) if is_speed(key)]
    if not rows:
        return [Heading("Throughput"), Text("not run: no stage reported its speed")]
    return [Heading("Throughput"), Text("How fast each stage ran on this machine (wall_s and train_s in "
                                        "seconds; mfu is the share of the hardware's peak FLOP/s)."),
            Table(["stage", "metric", "value"], rows, text=(0, 1))]


# ---------------------------------------------------------------- main
def build(inp: Inputs, figures: Path, title: str, digits: int, dpi: int) -> list[Block]:
    return [Heading(title, 1),
            Text(f"Every number below comes from {inp.metrics_dir.name}/ and every curve from "
                 f"{inp.plots_dir.name}/, as the pipeline's stages wrote them."),
            *funnel_section(inp, digits),
            *contamination_section(inp, digits),
            *tokenizer_section(inp, digits),
            *training_section(inp, figures, digits, dpi),
            *eval_section(inp, digits),
            *hallucination_section(inp, digits),
            *selective_section(inp, figures, digits, dpi),
            *alignment_section(inp, figures, digits, dpi),
            *throughput_section(inp, digits)]


def check(out: Path, blocks: list[Block]) -> None:
    """Every picture the report shows exists and is a PNG."""
    for b in blocks:
        if isinstance(b, Image):
            png = out / b.path
            if not png.exists() or png.read_bytes()[:8] != b"\x89PNG\r\n\x1a\n":
                raise ReportError(f"{png}: the report shows it but it is missing or not a PNG")


def main(argv: list[str] | None = None) -> Path:
    ap = argparse.ArgumentParser(prog=f"python -m {__spec__.name}", description=__doc__.splitlines()[0])
    ap.add_argument("--metrics", type=Path, default=Path("metrics"))
    ap.add_argument("--plots", type=Path, default=Path("plots"))
    ap.add_argument("--out", type=Path, default=Path("report"))
    ap.add_argument("--params", type=Path, default=Path("params.yaml"))
    args = ap.parse_args(argv)
    params = load_all(args.params)
    p = params.report

    inp = read_inputs(args.metrics, args.plots, p.models, {n: (s.model, s.wrapper) for n, s in params.eval.systems.items()})
    log.info("report: metrics of %s; eval of %s", ", ".join(inp.stages) or "no stage",
             ", ".join(m for m in inp.models if m in inp.evals) or "no model")
    with atomic_dir(args.out) as tmp:
        (tmp / "figures").mkdir()
        blocks = build(inp, tmp / "figures", p.title, p.digits, p.figure_dpi)
        check(tmp, blocks)
        (tmp / "report.md").write_text(to_markdown(blocks))
        (tmp / "report.html").write_text(to_html(blocks, p.title))
    log.info("report: wrote %s and %s (%d figures)", args.out / "report.md", args.out / "report.html",
             sum(isinstance(b, Image) for b in blocks))
    return args.out


if __name__ == "__main__":
    run(main)
