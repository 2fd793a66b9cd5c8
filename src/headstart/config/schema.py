"""Structured-config schemas. Hydra validates every composed config and override against these,
so an unknown key or a wrong type fails before any model is built, naming the key.

Each group option YAML lists its schema first in its defaults (``- /schema/data@_here_: text_lm``),
the documented Hydra pattern for group schemas; each schema registers itself (``Schema``).

Every default of a task, data or model setting is declared here and nowhere else: constructors take
theirs from these classes (``temperature: float = SimCLRConfig.temperature``) and group option YAMLs
set only what differs (tests/test_shipped_defaults.py checks both).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from omegaconf import II, MISSING

#: (ConfigStore group, name) -> schema; filled by the schemas themselves as they are defined.
SCHEMAS: dict[tuple[str | None, str], type] = {}


class Schema:
    """The base of every schema. A schema declared with ``group`` and ``name``
    (``class SimCLRConfig(ImageContrastiveConfig, group="schema/task", name="simclr")``) registers
    itself, and ``register_configs`` puts it into Hydra's ConfigStore under that group and name."""

    def __init_subclass__(cls, group: str | None = None, name: str | None = None, **kwargs) -> None:
        super().__init_subclass__(**kwargs)
        if name is not None:
            SCHEMAS[(group, name)] = cls


@dataclass
class PathsConfig(Schema, group="schema/paths", name="paths"):
    root_dir: str = "."
    data_dir: str = "${paths.root_dir}/data"
    log_dir: str = "${paths.root_dir}/outputs"
    # Trained tokenizers and tokenized datasets, reused across runs.
    cache_dir: str = "${paths.root_dir}/.cache/headstart"
    # None only where Hydra has no run yet (`--cfg job --resolve`).
    output_dir: str | None = "${hydra:runtime.output_dir}"


@dataclass
class TrainerConfig(Schema, group="schema/trainer", name="trainer"):
    """The keyword arguments of ``lightning.pytorch.Trainer`` that a config may set."""

    _target_: str = "lightning.pytorch.Trainer"
    accelerator: str = "auto"
    strategy: Any = "auto"
    devices: Any = "auto"
    num_nodes: int = 1
    precision: Any = None
    fast_dev_run: Any = False
    max_epochs: int | None = None
    min_epochs: int | None = None
    max_steps: int = -1
    min_steps: int | None = None
    max_time: Any = None
    limit_train_batches: Any = None
    limit_val_batches: Any = None
    limit_test_batches: Any = None
    limit_predict_batches: Any = None
    overfit_batches: Any = 0.0
    val_check_interval: Any = None
    check_val_every_n_epoch: int | None = 1
    num_sanity_val_steps: int | None = None
    log_every_n_steps: int | None = None
    enable_checkpointing: bool | None = None
    enable_progress_bar: bool | None = None
    enable_model_summary: bool | None = None
    accumulate_grad_batches: int = 1
    gradient_clip_val: float | None = None
    gradient_clip_algorithm: str | None = None
    deterministic: Any = None
    benchmark: bool | None = None
    inference_mode: bool = True
    use_distributed_sampler: bool = True
    profiler: Any = None
    detect_anomaly: bool = False
    barebones: bool = False
    plugins: Any = None
    sync_batchnorm: bool = False
    reload_dataloaders_every_n_epochs: int = 0
    default_root_dir: str | None = "${paths.output_dir}"


@dataclass
class LabelAmountFields(Schema):
    """How many training labels a labelled data set keeps (headstart.data.subsets): a share, or a
    number of examples spread over the classes by label_sampling (stratified | balanced | per_class)."""

    label_fraction: float = 1.0
    # More than the training split has keeps all of it, with a warning.
    label_count: int | None = None
    label_sampling: str = "stratified"


@dataclass
class TextDataConfig(Schema):
    """Fields shared by every text data module."""

    _target_: str = MISSING
    builtin: str | None = None
    train_files: list[str] = field(default_factory=list)
    val_files: list[str] = field(default_factory=list)
    test_files: list[str] = field(default_factory=list)
    # Files to label with a fine-tuned model (mode=predict): rows with the text column, no labels needed.
    predict_files: list[str] = field(default_factory=list)
    text_column: str = "text"
    # Field delimiter of .csv/.tsv files; null: a comma for .csv, a tab for .tsv.
    delimiter: str | None = None
    val_fraction: float = 0.1
    tokenizer: str | None = None
    tokenizer_type: str = "wordpiece"
    vocab_size: int = 8000
    lowercase: bool = True
    max_length: int = 128
    batch_size: int = 32
    eval_batch_size: int | None = None
    num_workers: int = 0
    # Training batches of similar lengths (line-by-line data pads less); transformers' LengthGroupedSampler.
    bucket_by_length: bool = False
    num_proc: int | None = None
    data_dir: str = II("paths.data_dir")
    cache_dir: str = II("paths.cache_dir")
    seed: int = II("seed")


@dataclass
class TextLMDataConfig(TextDataConfig, group="schema/data", name="text_lm"):
    _target_: str = "headstart.data.text_lm.TextLMDataModule"
    packing: str = "blocks"


@dataclass
class TextClassificationDataConfig(TextDataConfig, LabelAmountFields, group="schema/data",
                                   name="text_classification"):
    _target_: str = "headstart.data.text_classification.TextClassificationDataModule"
    label_column: str = "label"
    # Rows shared by each pair of splits (and overlap_files, e.g. the pretraining corpus) are counted in
    # the log and results.json; true: dev rows that repeat the training split or the corpus, and test
    # rows that repeat either or the dev split, are dropped, so metrics measure generalisation.
    drop_eval_overlap: bool = False
    overlap_files: list[str] = field(default_factory=list)
    # The smallest test dropping may leave: fewer rows, or a smaller share of the test file, stops the
    # run before training (a score on a few leftover rows says little).
    min_test_rows: int = 100
    min_test_share: float = 0.2
    # Rows whose label is null are refused (naming the first); true: dropped, with a count in the log.
    drop_missing_labels: bool = False


@dataclass
class BackboneConfig(Schema):
    """Fields shared by every backbone: built from ``arch`` (a transformers config, no download), or
    loaded from ``name_or_path``; ``init_from`` is the export the hand-off loads."""

    _target_: str = MISSING
    arch: dict[str, Any] = field(default_factory=dict)
    name_or_path: str | None = None
    init_from: str | None = None
    # Accept an init_from export whose pretraining did not finish (its headstart_export.json says so).
    allow_incomplete: bool = False
    attn_implementation: str = "sdpa"


@dataclass
class TextBackboneConfig(BackboneConfig, group="schema/model", name="text_backbone"):
    _target_: str = "headstart.backbones.text.TextBackboneSpec"
    # What the hand-off loads from init_from: "backbone" (every weight) or "embeddings" (the input
    # embedding matrix alone, e.g. word2vec vectors into a BERT).
    init_scope: str = "backbone"


@dataclass
class TaskConfig(Schema):
    """Fields shared by every objective and downstream head."""

    _target_: str = MISSING
    optimizer: Any = MISSING
    scheduler: Any = None
    monitor: str = "val/loss"
    monitor_mode: str = "min"


@dataclass
class MaskingFields(Schema):
    """BERT's masking (transformers' DataCollatorForLanguageModeling), shared by the masked LM and its
    distillation: this share of the tokens is selected; of those, mask_replace_prob become [MASK],
    random_replace_prob a random token, and the rest stay as they are."""

    mlm_probability: float = 0.15
    mask_replace_prob: float = 0.8
    random_replace_prob: float = 0.1


@dataclass
class MaskedLMConfig(TaskConfig, MaskingFields, group="schema/task", name="masked_lm"):
    _target_: str = "headstart.objectives.masked_lm.MaskedLanguageModeling"
    # BERT's next-sentence prediction beside the MLM (BertForPreTraining); needs data.packing=pairs.
    next_sentence_prediction: bool = False


@dataclass
class HeadConfig(TaskConfig):
    """Fields shared by the downstream heads: dropout before the head's linear layer, and the
    validation metric that picks the best checkpoint."""

    classifier_dropout: float = 0.1
    monitor: str = "val/acc"
    monitor_mode: str = "max"


@dataclass
class SequenceClassificationConfig(HeadConfig, group="schema/task", name="sequence_classification"):
    _target_: str = "headstart.heads.sequence_classification.SequenceClassifier"
    pooling: str = "mean"


@dataclass
class FeatureExportConfig(TaskConfig, group="schema/task", name="feature_export"):
    """Write the backbone's features of every example (headstart.heads.features); nothing trains."""

    _target_: str = "headstart.heads.features.FeatureExtractor"
    optimizer: Any = None
    # How text token states become one vector (image backbones have their own): mean, cls or last.
    pooling: str = "mean"
    # Which splits to write; null: all the data has.
    splits: list[str] | None = None


@dataclass
class StageConfig(Schema):
    """One pipeline stage: an experiment plus overrides that apply to it alone, either a list of
    override strings (``["data=text_files", "data.train_files=[a.txt]"]``) or a nested dict
    (``{trainer: {max_epochs: 3}}``). Overrides given on the command line
    (``'pipeline.finetune.overrides=["trainer.max_steps=300"]'``) are added to the experiment's own;
    one of a key the experiment sets replaces that entry."""

    experiment: str = MISSING
    overrides: Any = None
    # Settings chosen on validation with pipeline.learning_rates, as Hydra sweeps:
    # ["transfer.layer_lr_decay=0.1,0.3"].
    search: list[str] | None = None


@dataclass
class ScratchStageConfig(Schema):
    """The from-scratch baseline: the finetune stage's overrides, then these; ``search`` as the
    finetune stage's (its own settings chosen on validation)."""

    overrides: Any = None
    search: list[str] | None = None


@dataclass
class PipelineFilesConfig(Schema):
    """A user's own text for a pipeline whose stage overrides refer to it (e.g.
    experiment=label_efficiency_text_files): an unlabelled corpus for pretraining and labelled
    train/dev/test files (.txt, .jsonl, .csv, .tsv or .parquet) for the downstream task."""

    corpus: list[str] = MISSING
    train: list[str] = MISSING
    dev: list[str] = MISSING
    test: list[str] = MISSING
    text_column: str = "text"
    label_column: str = "label"


@dataclass
class PipelineConfig(Schema):
    # The pretrain stage takes one more key, ``from``: a finished pretrain run (or pipeline, or export)
    # directory to reuse instead of pretraining again. A Python keyword cannot be a dataclass field, so
    # this stage is a plain mapping, checked by the pipeline runner (headstart.pipeline.runner).
    pretrain: Any = field(default_factory=lambda: {"experiment": MISSING, "overrides": None, "from": None})
    finetune: StageConfig = field(default_factory=StageConfig)
    scratch: ScratchStageConfig = field(default_factory=ScratchStageConfig)
    files: PipelineFilesConfig = field(default_factory=PipelineFilesConfig)
    scratch_baseline: bool = True
    metric: str = "test/acc"
    # Label efficiency: fine-tune (and train from scratch) once per amount of labels and seed, and
    # report the metric against the number of labelled examples (label_efficiency.csv / .png).
    # label_fractions: shares of the training labels; label_counts: numbers of labelled examples
    # (spread over the classes as data.label_sampling says), or "all". Both null: one run each.
    label_fractions: list[float] | None = None
    label_counts: list[Any] | None = None
    seeds: list[int] | None = None
    # Each downstream model (fine-tuned, scratch) is trained at each of these learning rates and the
    # one best on validation is kept, per amount of labels and seed: every model gets its own tuned
    # rate, chosen the same way. null: one run at task.optimizer.lr.
    learning_rates: list[float] | None = None


@dataclass
class TransferConfig(Schema):
    """How a downstream run uses its backbone (see headstart.transfer.modes)."""

    mode: str = "finetune"
    freeze_layers: int = 0
    freeze_patterns: list[str] = field(default_factory=list)
    layer_lr_decay: float = 1.0


@dataclass
class SpeedConfig(Schema):
    """Speed switches that change how the network runs, not what it computes (BENCHMARKS.md has
    their measured effect). Others live where they act: model.attn_implementation (sdpa/eager),
    trainer.precision, task.optimizer.fused, data.packing, data.bucket_by_length, data.num_workers."""

    # torch.compile the training step (masked and causal LM: forward and loss as one graph of fixed shapes)
    # or else the network, in place (its state_dict keys, so checkpoints and exports, stay the same).
    compile: bool = False
    compile_mode: str | None = None
    # inductor generates kernels; aot_eager or eager check that the step compiles without generating them.
    compile_backend: str = "inductor"
    # NHWC memory layout for convolutional vision backbones (faster convolutions with bf16 on GPUs).
    channels_last: bool = False
    # torch.set_float32_matmul_precision: high lets float32 matrix multiplies use TF32 tensor cores
    # (trainer=gpu sets it); null leaves torch's default (highest).
    matmul_precision: str | None = None
    # Pad the vocabulary matrices of masked/causal LMs to a multiple of this many rows (trainer=gpu: 64, the
    # shapes tensor cores run fastest); the padding is never predicted and exports leave it out. null: none.
    pad_vocab_to_multiple_of: int | None = None


@dataclass
class TrainConfig(Schema, name="train_schema"):
    """The root of every composed config."""

    # train | predict | evaluate: predict labels data.predict_files, evaluate scores data.test_files, both
    # with the fine-tuned model model.init_from names (headstart.pipeline.inference), training nothing.
    mode: str = "train"
    task_name: str = "train"
    # The random seed of everything (Lightning's seed_everything): an integer in [0, 2**32 - 1].
    seed: int = 42
    run_name: str | None = None
    run_group: str | None = None
    # W&B job type and tags of the run; a pipeline sets the job type of each stage (pretrain, finetune,
    # scratch) and tags them with its task name.
    run_job_type: str | None = None
    run_tags: list[str] = field(default_factory=list)
    paths: PathsConfig = MISSING
    data: Any = MISSING
    model: Any = MISSING
    task: Any = MISSING
    trainer: Any = MISSING
    logger: Any = None
    callbacks: Any = None
    transfer: TransferConfig = field(default_factory=TransferConfig)
    speed: SpeedConfig = field(default_factory=SpeedConfig)
    pipeline: PipelineConfig | None = None
    ckpt_path: str | None = None
    resume: str | None = None
    test_after_fit: bool = True
    export_backbone: bool = True
    optimized_metric: str | None = None


@dataclass
class Word2VecConfig(TaskConfig, group="schema/task", name="word2vec"):
    _target_: str = "headstart.objectives.word2vec.Word2Vec"
    mode: str = "skipgram"  # skipgram | cbow | document
    # Context words on either side of a centre; each centre draws its own reach in 1..window (not document).
    window: int = 5
    # Noise words per example, drawn from the training split's unigram counts ^ noise_power.
    negatives: int = 5
    # Frequent words are dropped with probability 1 - sqrt(subsample_threshold / frequency); 0 keeps all.
    subsample_threshold: float = 1e-3
    noise_power: float = 0.75


@dataclass
class DistillationConfig(TaskConfig, MaskingFields, group="schema/task", name="distillation"):
    _target_: str = "headstart.objectives.distillation.MaskedLMDistillation"
    teacher: str = MISSING
    temperature: float = 2.0
    alpha: float = 0.5


@dataclass
class CausalLMConfig(TaskConfig, group="schema/task", name="causal_lm"):
    _target_: str = "headstart.objectives.causal_lm.CausalLanguageModeling"
    # After each validation epoch: continue the first sample_prompt_tokens of the validation data by
    # sample_new_tokens (0: no samples), greedily (sample_top_k=null) or top-k with sample_seed.
    sample_prompt_tokens: int = 12
    sample_new_tokens: int = 20
    sample_top_k: int | None = None
    sample_seed: int = II("seed")


@dataclass
class OnlineEvaluationConfig(TaskConfig):
    """Fields of the objectives that evaluate their features online when the data has labels (the
    image objectives, SimCSE): see headstart.objectives.online_evaluation."""

    # Neighbours of the kNN accuracy of the validation features (val/knn_acc); 0 switches it off.
    knn_k: int = 20
    # A linear classifier on detached backbone features, trained alongside (val/probe_acc), at
    # online_probe_lr_scale times the objective's learning rate.
    online_probe: bool = True
    online_probe_lr_scale: float = 10.0


@dataclass
class SimCSEConfig(OnlineEvaluationConfig, group="schema/task", name="simcse"):
    _target_: str = "headstart.objectives.simcse.SimCSE"
    temperature: float = 0.05
    # How token states become one vector: mean (what sequence_classification reads by default), cls, last.
    pooling: str = "mean"
    # SimCSE's MLP (linear + tanh) between the pooled vector and the loss; not part of the export.
    projection: bool = True
    # Under DDP, every process's texts are negatives for every other's (a larger effective batch).
    gather_negatives: bool = True


@dataclass
class ImageDataConfig(LabelAmountFields, group="schema/data", name="image"):
    """Labelled images: ``builtin`` (digits) or folders with one subfolder per class."""

    _target_: str = "headstart.data.vision.ImageDataModule"
    builtin: str | None = None
    train_dir: str | None = None
    val_dir: str | None = None
    test_dir: str | None = None
    # Images for mode=predict: image files, or folders whose image files (at any depth) are labelled.
    predict_files: list[str] = field(default_factory=list)
    val_fraction: float = 0.1
    # A directory with a preprocessor_config.json whose preprocessing to use (a model's or export's
    # preprocessing wins over it and over the settings below).
    processor: str | None = None
    image_size: int = 16
    num_channels: int = 1
    # null: the per-channel mean/std of the training images.
    image_mean: list[float] | None = None
    image_std: list[float] | None = None
    batch_size: int = 64
    eval_batch_size: int | None = None
    num_workers: int = 0
    seed: int = II("seed")


@dataclass
class VisionBackboneConfig(BackboneConfig, group="schema/model", name="vision_backbone"):
    """A transformers vision backbone: resnet, vit or headstart_cnn."""

    _target_: str = "headstart.backbones.vision.VisionBackboneSpec"


@dataclass
class ImageClassificationConfig(HeadConfig, group="schema/task", name="image_classification"):
    _target_: str = "headstart.heads.image_classification.ImageClassifier"


@dataclass
class ImageAugmentConfig(Schema):
    """Batched augmentations of the contrastive image objectives (headstart.data.augment.ImageAugment);
    brightness, noise_std and erasing act on normalised pixels. 0 or null switches a part off."""

    crop_scale: tuple[float, float] | None = (0.5, 1.0)
    crop_ratio: tuple[float, float] = (0.75, 1.3333)
    rotation: float = 15.0
    translate: float = 0.1
    hflip_prob: float = 0.0
    brightness: float = 0.4
    contrast: float = 0.4
    noise_std: float = 0.1
    erase_prob: float = 0.25
    erase_scale: tuple[float, float] = (0.02, 0.2)


@dataclass
class ImagePretrainingConfig(OnlineEvaluationConfig):
    """Fields shared by every image pretraining objective."""


@dataclass
class ImageContrastiveConfig(ImagePretrainingConfig):
    """Fields shared by SimCLR and MoCo."""

    temperature: float = 0.2  # MoCo v2's; SimCLR sets its own
    projection_dim: int = 64
    projection_hidden_dim: int | None = None
    augment: ImageAugmentConfig = field(default_factory=ImageAugmentConfig)


@dataclass
class ImageDecoderFields(Schema):
    """The decoder of the image autoencoders (headstart.objectives.image_decoder)."""

    # Channels of the decoder's upsampling stages (each doubles the size).
    decoder_widths: tuple[int, ...] = (64, 32)


@dataclass
class DenoisingAutoencoderConfig(ImagePretrainingConfig, ImageDecoderFields, group="schema/task", name="denoising_autoencoder"):
    _target_: str = "headstart.objectives.denoising_autoencoder.DenoisingAutoencoder"
    noise: str = "gaussian"
    noise_level: float = 0.5


@dataclass
class VariationalAutoencoderConfig(ImagePretrainingConfig, ImageDecoderFields, group="schema/task",
                                   name="variational_autoencoder"):
    _target_: str = "headstart.objectives.variational_autoencoder.VariationalAutoencoder"
    latent_dim: int = 16
    kl_weight: float = 1.0
    # Optimizer steps over which the KL weight rises linearly from 0 to kl_weight (0: no annealing).
    kl_anneal_steps: int = 0


@dataclass
class MaskedAutoencoderConfig(ImagePretrainingConfig, group="schema/task", name="masked_autoencoder"):
    _target_: str = "headstart.objectives.masked_autoencoder.MaskedAutoencoder"
    mask_ratio: float = 0.75
    norm_pix_loss: bool = False
    decoder_hidden_size: int = 64
    decoder_num_hidden_layers: int = 2
    decoder_num_attention_heads: int = 2
    decoder_intermediate_size: int = 128


@dataclass
class SimCLRConfig(ImageContrastiveConfig, group="schema/task", name="simclr"):
    _target_: str = "headstart.objectives.simclr.SimCLR"
    temperature: float = 0.5
    # The negatives of every process (DDP), not only this one's.
    gather_negatives: bool = True


@dataclass
class MoCoConfig(ImageContrastiveConfig, group="schema/task", name="moco"):
    _target_: str = "headstart.objectives.moco.MoCo"
    # The key encoder keeps this share of its weights at each step (MoCo: 0.999 over long runs).
    momentum: float = 0.99
    # Keys of earlier batches kept as negatives; smaller than the training set, so that an image's own
    # key from the last epoch is rarely among them.
    queue_size: int = 512


# -- token classification and regression heads --
@dataclass
class TokenClassificationDataConfig(TextDataConfig, LabelAmountFields, group="schema/data",
                                    name="token_classification"):
    """Rows of words and their IOB2 tags (.jsonl/.parquet lists, or space-separated .csv strings)."""

    _target_: str = "headstart.data.token_classification.TokenClassificationDataModule"
    tokens_column: str = "tokens"
    tags_column: str = "tags"
    # Label every sub-token of a word (B- becomes I- after the first), not only its first.
    label_all_tokens: bool = False


@dataclass
class TextRegressionDataConfig(TextClassificationDataConfig, group="schema/data", name="text_regression"):
    """A text column and a numeric target column (or a list of numbers for several targets)."""

    _target_: str = "headstart.data.text_regression.TextRegressionDataModule"


@dataclass
class TokenClassificationConfig(HeadConfig, group="schema/task", name="token_classification"):
    _target_: str = "headstart.heads.token_classification.TokenClassifier"
    monitor: str = "val/f1"


@dataclass
class RegressionConfig(HeadConfig, group="schema/task", name="regression"):
    _target_: str = "headstart.heads.regression.Regressor"
    pooling: str = "mean"
    loss: str = "mse"  # mse | mae | huber
    huber_delta: float = 1.0
    # Learn the targets standardised by the training mean/std; metrics are in the data's units.
    standardize_targets: bool = True
    monitor: str = "val/mse"
    monitor_mode: str = "min"


# -- extractive question answering --
@dataclass
class QuestionAnsweringDataConfig(TextDataConfig, LabelAmountFields, group="schema/data",
                                  name="question_answering"):
    """SQuAD-style rows: a context, a question and the answer's text and character offset."""

    _target_: str = "headstart.data.question_answering.QuestionAnsweringDataModule"
    context_column: str = "context"
    question_column: str = "question"
    # SQuAD's {"text": [...], "answer_start": [...]}; without it, the flat pair of columns below.
    answers_column: str = "answers"
    answer_text_column: str = "answer_text"
    answer_start_column: str = "answer_start"
    # Context tokens that neighbouring windows of a long context share.
    doc_stride: int = 32


@dataclass
class QuestionAnsweringConfig(HeadConfig, group="schema/task", name="question_answering"):
    _target_: str = "headstart.heads.question_answering.QuestionAnswering"
    # Evaluation's answer search: the longest answer in tokens, and how many top start/end tokens of
    # each window are paired into candidates.
    max_answer_length: int = 30
    n_best: int = 20
    monitor: str = "val/f1"


# -- multi-task: one backbone, a head and a data set per task --
@dataclass
class MultiTaskDataConfig(Schema, group="schema/data", name="multitask"):
    """``tasks``: task name -> that task's data config (any ``data`` group option, composed there in
    the experiment's defaults)."""

    _target_: str = "headstart.data.multitask.MultiTaskDataModule"
    tasks: dict[str, Any] = field(default_factory=dict)
    # How the tasks' training loaders make steps: max_size_cycle (every task in every step, shorter
    # loaders start over), min_size (stop at the shortest) or max_size (run out the longest).
    mode: str = "max_size_cycle"
    # Loader worker processes of every task's loaders (trainer=gpu sets it); null: each task's own.
    num_workers: int | None = None


@dataclass
class MultiTaskEntryConfig(Schema):
    # A downstream head's config (any head of the ``task`` group), composed in the experiment's defaults.
    head: Any = None
    # The task's loss weight in the sum that trains the shared model.
    weight: float = 1.0


@dataclass
class MultiTaskConfig(TaskConfig, group="schema/task", name="multitask"):
    _target_: str = "headstart.heads.multitask.MultiTaskModel"
    # The model builds the heads itself (on the shared backbone), so Hydra must not instantiate them.
    _recursive_: bool = False
    tasks: dict[str, MultiTaskEntryConfig] = field(default_factory=dict)
