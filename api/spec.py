"""The `spec` of a DistillationJob.

Defaults follow KDFlow's (arXiv 2603.01875, README argument tables) for the training and distillation
hyper-parameters. Resource shapes default to the smallest valid one (one GPU, no parallelism) so that an
omitted field never silently asks a cluster for eight GPUs.

Fields that are `None` by default are optional with no value; they are the only optional fields, so an
explicit `null` in YAML means the same as leaving the field out (the API server prunes it the same way).
"""

from enum import StrEnum
from typing import Annotated, Any

from pydantic import Field, ValidationInfo, WithJsonSchema, field_validator

from kubedistill.api.base import SpecModel
from kubedistill.api.generation import GenerationSpec
from kubedistill.api.registry import ALGORITHM_GROUP, LOSS_GROUP, known_names
from kubedistill.api.tracking import TrackingSpec

Quantity = Annotated[str, Field(pattern=r"^[0-9]+(\.[0-9]+)?(m|k|Ki|M|Mi|G|Gi|T|Ti|P|Pi|E|Ei)?$")]
PositiveInt = Annotated[int, Field(ge=1)]
Fraction = Annotated[float, Field(ge=0.0, le=1.0)]
KubernetesObject = dict[str, Any]


class Mode(StrEnum):
    OFF_POLICY = "offPolicy"
    ON_POLICY = "onPolicy"
    SELF_DISTILLATION = "selfDistillation"
    SFT = "sft"
    PREFERENCE = "preference"
    REINFORCEMENT = "reinforcement"


class Backend(StrEnum):
    """Which inference engine serves a teacher or rollout group.

    `auto` picks SGLang where a GPU and the `sglang` extra are present and transformers otherwise, so the
    same manifest runs on a cluster and on a laptop.
    """

    AUTO = "auto"
    SGLANG = "sglang"
    TRANSFORMERS = "transformers"


class Reshard(StrEnum):
    """When FSDP2 frees a decoder block's gathered weights (`reshardAfterForward`).

    `always`: after every forward, and gradients are reduce-scattered after every micro-batch (least memory:
    a rank holds one block's whole weights at a time). `never`: a rank keeps the whole student and its
    gradients unsharded through a step's micro-batches, so a step all-gathers each block once and
    reduce-scatters once (least communication; the memory of the whole model and its gradients). `auto`:
    `never` on one rank (its shard is the whole model anyway) or when the whole student and its gradients
    take at most an eighth of a device's memory, else `always`.
    """

    AUTO = "auto"
    ALWAYS = "always"
    NEVER = "never"


class Quantization(StrEnum):
    FP8 = "fp8"


class Attention(StrEnum):
    """The attention kernel of the student and of the engines that run a model with transformers (the teacher,
    the rollout engines): transformers' `attn_implementation`.

    SGLang engines take their own vocabulary (`attention_backend`, SGLang 0.5.23
    `srt/arg_groups/choices.py:69-99`): flash_attention_3 becomes `fa3` and flex_attention `flex_attention`;
    under sdpa SGLang keeps its own choice for the GPU (it serves with no SDPA kernel of its own but the
    torch_native reference path). flash_attention_2 and eager have no SGLang counterpart, and are refused
    with an SGLang teacher or rollout.
    """

    SDPA = "sdpa"
    FLASH_ATTENTION_2 = "flash_attention_2"
    FLASH_ATTENTION_3 = "flash_attention_3"
    FLEX_ATTENTION = "flex_attention"
    EAGER = "eager"


class LoraExport(StrEnum):
    MERGED = "merged"
    ADAPTER = "adapter"


class DataFormat(StrEnum):
    AUTO = "auto"
    JSONL = "jsonl"
    JSON = "json"
    PARQUET = "parquet"
    HUB = "hub"


class OnBadRecord(StrEnum):
    FAIL = "fail"
    SKIP = "skip"


class LrScheduler(StrEnum):
    COSINE_WITH_MIN_LR = "cosineWithMinLr"
    CONSTANT = "constant"
    LINEAR = "linear"
    COSINE_WITH_RESTARTS = "cosineWithRestarts"
    WSD = "wsd"


class Precision(StrEnum):
    BF16 = "bf16"
    FP32 = "fp32"


class OnNonFinite(StrEnum):
    FAIL = "fail"
    SKIP = "skip"


class DskdTokenAlign(StrEnum):
    ETA = "eta"
    CMA = "cma"


class DskdProjectorInit(StrEnum):
    LEARNED = "learned"
    PSEUDO_INVERSE = "pseudoInverse"


class TrainTurns(StrEnum):
    ALL = "all"
    LAST = "last"


class LoraSpec(SpecModel):
    rank: Annotated[int, Field(ge=0)] = 0
    """LoRA rank of the student's adapters; 0 trains all weights."""
    alpha: Annotated[int, Field(ge=1)] = 16
    """LoRA scaling numerator (the update is scaled by alpha / rank)."""
    dropout: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.0
    """Dropout on the adapters' input."""
    target_modules: Annotated[list[str], Field(min_length=1)] = ["all-linear"]
    """Module names to adapt; `all-linear` adapts every linear layer but the output head."""
    export: LoraExport = LoraExport.MERGED
    """What the final export holds: the merged full model, or the adapter alone."""


class TeacherSpec(SpecModel):
    model: Annotated[str, Field(min_length=1)] | None = None
    """Path or hub id of the teacher. Required unless spec.mode is selfDistillation (then the student's)."""
    tokenizer: Annotated[str, Field(min_length=1)] | None = None
    """Tokenizer path if it differs from the model's."""
    backend: Backend = Backend.AUTO
    """Inference engine of the teacher actors."""
    tensor_parallel: PositiveInt = 1
    """SGLang tensor-parallel size of one teacher engine."""
    pipeline_parallel: PositiveInt = 1
    """SGLang pipeline-parallel size of one teacher engine (stages may sit on different nodes)."""
    expert_parallel: PositiveInt = 1
    """SGLang expert-parallel size for mixture-of-experts teachers; divides tensorParallel."""
    replicas: PositiveInt = 1
    """Independent teacher engines; micro-batches are balanced over them by token count."""
    gpus_per_replica: PositiveInt = 1
    """GPUs one teacher engine uses in all; a multiple of tensorParallel x pipelineParallel."""
    nodes_per_replica: PositiveInt = 1
    """Pods (nodes) one teacher engine spans; gpusPerReplica is split evenly over them."""
    mem_fraction_static: Annotated[float, Field(gt=0.0, lt=1.0)] = 0.4
    """Fraction of each GPU's memory SGLang reserves for weights and KV cache."""
    quantization: Quantization | None = None
    """Online weight quantization of the teacher (SGLang only)."""
    steps_per_wake: PositiveInt = 1
    """Colocated (spec.cluster.colocate): the optimizer steps whose teacher hidden states one wake of the
    teacher computes (KDFlow's teacher_forward_n_batches); they wait in Ray's object store while the students
    train those steps. A wake ends early where engines take the student's new weights (the end of an
    on-policy rollout round, a self-distillation teacher's update), so no hidden state comes from weights
    older than a step trains on."""


class WeightedTeacherSpec(TeacherSpec):
    """One of several teachers (spec.teachers): a teacher's settings and its share of the mixture."""

    # Required here, where spec.teacher's may be left out (self-distillation's teacher is the student).
    model: Annotated[str, Field(min_length=1)]  # pyright: ignore[reportGeneralTypeIssues, reportIncompatibleVariableOverride]
    """Path or hub id of this teacher. Every teacher has the same vocabulary (its output head's rows) as the
    first: their next-token distributions are mixed token by token."""
    weight: Annotated[float, Field(gt=0.0)] = 1.0
    """This teacher's share of the target distribution: its weight over the sum of every teacher's."""


class StudentSpec(SpecModel):
    model: Annotated[str, Field(min_length=1)]
    """Path or hub id of the student to train."""
    tokenizer: Annotated[str, Field(min_length=1)] | None = None
    """Tokenizer path if it differs from the model's; also the tokenizer of the training data."""
    replicas: PositiveInt = 1
    """FSDP2 ranks (one GPU each) training the student."""
    fsdp_shard_size: Annotated[int, Field(ge=-1)] = -1
    """Ranks one parameter is sharded over; -1 shards over all ranks, a divisor of replicas gives HSDP."""
    context_parallel: PositiveInt = 1
    """Ranks one sequence is cut over (context parallelism: each holds a zigzag chunk of every micro-batch and
    attention gathers the keys and values of the whole sequence); must divide replicas. Text students on sdpa
    or eager, vanilla-style algorithms (no dskd or simpleCtkd), fsdpShardSize -1."""
    cpu_offload: bool = False
    """Keep parameters and optimizer state in host memory between uses."""
    reshard_after_forward: Reshard = Reshard.AUTO
    """When FSDP2 frees gathered weights: auto, always (least memory) or never (least communication)."""
    gradient_checkpointing: bool = True
    """Recompute activations in the backward pass to save memory."""
    lora: LoraSpec = LoraSpec()
    """Low-rank adapters instead of full fine-tuning."""
    freeze_vision: bool = True
    """A vision-language student: keep its vision tower (and patch merger) fixed and train the language model;
    no effect on a text model."""
    attention: Attention = Attention.SDPA
    """Attention kernel of the student, and of transformers teachers and rollout engines: sdpa, eager, or on
    CUDA GPUs flex_attention (torch's) and, with their packages installed, flash_attention_2 (flash-attn)
    and flash_attention_3 (flash-attn-3). SGLang engines: fa3 for flash_attention_3, flex_attention for
    flex_attention, their own choice for sdpa; flash_attention_2 and eager are refused with them."""
    liger_kernel: bool = False
    """Liger's Triton kernels (RMSNorm, RoPE, SwiGLU) in the student's decoder (CUDA GPUs only; the loss stays
    KubeDistill's own)."""


class RolloutSpec(SpecModel):
    backend: Backend = Backend.AUTO
    """Generation engine of the rollout actors."""
    engines: PositiveInt = 1
    """Rollout engines generating in parallel."""
    tensor_parallel: PositiveInt = 1
    """Tensor-parallel size (GPUs) of one rollout engine."""
    batch_size: PositiveInt = 32
    """Prompts generated for per rollout round."""
    samples_per_prompt: PositiveInt = 1
    """Responses sampled per prompt."""
    max_new_tokens: PositiveInt = 2048
    """Longest response generated."""
    temperature: Annotated[float, Field(ge=0.0)] = 1.0
    """Sampling temperature; 0 decodes greedily."""
    top_p: Annotated[float, Field(gt=0.0, le=1.0)] = 1.0
    """Nucleus-sampling probability mass."""
    mem_fraction_static: Annotated[float, Field(gt=0.0, lt=1.0)] = 0.6
    """Fraction of each GPU's memory SGLang reserves for weights and KV cache."""
    lmbda: Annotated[float, Field(gt=0.0, le=1.0)] = 1.0
    """Share of steps trained on the student's own samples, drawn per step (TRL GKD's lmbda); the others train
    on the dataset's responses. Below 1 every step is a global batch of the dataset whose prompts an on-policy
    step gives to the student to answer, one rollout round per on-policy step."""
    sequence_kd: bool = False
    """Sequence-level KD (TRL GKD's seq_kd): the steps not drawn on-policy train on the teacher's answers to
    their prompts, sampled during training with this section's sampling settings, instead of the dataset's
    responses. Needs lmbda below 1 and one teacher (spec.teacher, not spec.teachers)."""


class PreferenceSpec(SpecModel):
    """Ranking-based distillation (mode preference): DPO on pairs of the teacher's answer (chosen) and the
    student's own (rejected), against the initial student as the frozen reference."""

    beta: Annotated[float, Field(gt=0.0)] = 0.1
    """DPO's beta: how far the student may move from the reference to widen a pair's margin (TRL's
    default)."""
    sft_weight: Annotated[float, Field(ge=0.0)] = 0.0
    """Weight of a cross-entropy term on the chosen (teacher's) answers added to DPO's loss: each pair's
    negative log-likelihood per chosen token, averaged over the step's pairs (TRL's `loss_type: [sigmoid,
    sft]` with this as the sft weight, RPO's alpha). DPO alone only ranks the teacher's answer above the
    student's; this term also pulls the student toward the teacher's answers themselves. 0: plain DPO."""


class Reward(StrEnum):
    TEACHER_LIKELIHOOD = "teacherLikelihood"
    """A sample's reward is the job's teacher's mean log-probability per answer token, computed exactly on
    the student ranks from the teacher's hidden states and its output head."""


class ReinforcementSpec(SpecModel):
    """RL-based distillation (mode reinforcement): GRPO on the student's own samples, the teacher as the
    reward, with a KL penalty to the initial student as the frozen reference."""

    kl_coef: Annotated[float, Field(ge=0.0)] = 0.04
    """Weight of the per-token KL to the reference (GRPO's beta); 0 drops it."""
    reward: Reward = Reward.TEACHER_LIKELIHOOD
    """How the teacher judges a sample."""


class DistillationSpec(SpecModel):
    algorithm: Annotated[str, Field(min_length=1)] = "vanilla"
    """Distillation algorithm: vanilla, dskd, simpleCtkd, sparseKd (mode sft on a hosted teacher's stored
    top-k log-probabilities, spec.generation.topLogprobs), or a registered plugin."""
    loss: Annotated[str, Field(min_length=1)] = "fkl"
    """Divergence between teacher and student: fkl, rkl, jsd, tvd, skl, srkl, akl, top1Ce, hrl, uld, or a
    registered plugin."""
    temperature: Annotated[float, Field(gt=0.0)] = 1.0
    """Both models' logits are divided by it before the softmax."""
    kd_ratio: Fraction = 0.5
    """Weight of the distillation loss; the cross-entropy on the data gets 1 - kdRatio."""
    jsd_beta: Fraction = 0.5
    """Generalised JSD weight, TRL's convention: 0 is forward KL, 1 is reverse KL, 0.5 symmetric JSD."""
    skew_lambda: Fraction = 0.1
    """Mixing weight of skewed KL (skl, srkl)."""
    adaptive_alpha: Annotated[float, Field(gt=0.0, le=1.0)] = 0.5
    """Probability mass that makes the head of the teacher's distribution in adaptive KL (akl)."""
    loss_add_tail: bool = True
    """sparseKd: compare the teacher's top-k plus one bucket for the rest of the vocabulary's mass (TRL's
    server distillation `loss_add_tail`); false renormalises both sides over the top-k alone."""
    hrl_top_k: PositiveInt = 5
    """How many of each model's most likely tokens the hierarchical ranking loss (hrl) compares."""
    teacher_update_freq: PositiveInt = 1
    """Self-distillation: copy the student's weights into the teacher every this many steps."""
    teacher_ema_decay: Annotated[float, Field(gt=0.0, lt=1.0)] | None = None
    """Self-distillation: keep an exponential moving average of the student as the teacher instead."""
    dskd_token_align: DskdTokenAlign = DskdTokenAlign.CMA
    """DSKD token alignment across tokenizers: exact (eta) or cross-model attention (cma)."""
    projector_learning_rate: Annotated[float, Field(gt=0.0)] = 1.0e-3
    """DSKD: learning rate of the projectors between the two hidden spaces."""
    dskd_projector_init: DskdProjectorInit = DskdProjectorInit.LEARNED
    """DSKD projectors: both learned from a plain initialisation (the paper's code), or pseudoInverse (KDFlow,
    DSKDv2): the teacher-to-student projector starts where both heads give equal logits over the shared
    tokens and is learned, the student-to-teacher one is recomputed every step from the student's head."""
    topk_vocab: PositiveInt | None = None
    """DSKD pseudoInverse: the equal-logits fit runs over the first this many shared tokens (lowest teacher
    ids) instead of the whole shared vocabulary (KDFlow's --dskd_topk_vocab; unset is its -1)."""
    loss_chunk_size: PositiveInt | None = None
    """Tokens per chunk of the fused loss: memory grows with it, kernel launches shrink. Unset: chosen per
    micro-batch from its shapes so that a chunk's logits are about the size of its hidden states
    (Liger-Kernel's rule: tokens / ceil(vocab / hidden), rounded up to a power of two)."""

    @field_validator("loss")
    @classmethod
    def _loss_is_registered(cls, name: str, info: ValidationInfo) -> str:
        return _registered(name, LOSS_GROUP, info)

    @field_validator("algorithm")
    @classmethod
    def _algorithm_is_registered(cls, name: str, info: ValidationInfo) -> str:
        return _registered(name, ALGORITHM_GROUP, info)


CHECK_PLUGIN_NAMES = "check_plugin_names"
"""Validation-context key: False skips the registry check of loss and algorithm names. The operator sets it,
because plugins are installed in the runtime image, which checks the names when the job starts."""


def _registered(name: str, group: str, info: ValidationInfo) -> str:
    if info.context and info.context.get(CHECK_PLUGIN_NAMES) is False:
        return name
    known = known_names(group)
    if name not in known:
        raise ValueError(f"unknown name {name!r}; known: {', '.join(known)}")
    return name


class DataSource(SpecModel):
    path: Annotated[str, Field(min_length=1)]
    """Where the records are, inside the pods (e.g. on a mounted volume): a file (jsonl, json, parquet;
    jsonl.gz, json.gz), a folder of such files, a glob matching them, a dataset saved with datasets'
    save_to_disk, or a hub dataset id (with split)."""
    format: DataFormat = DataFormat.AUTO
    """File format; auto goes by each file's extension, and takes a path that does not exist locally as a
    hub dataset id when split is set; hub loads the path with datasets.load_dataset."""
    split: Annotated[str, Field(min_length=1)] | None = None
    """Split to read from a hub dataset or a saved DatasetDict, e.g. train."""
    input_key: Annotated[str, Field(min_length=1)] = "messages"
    """Key of the chat messages (a list of {role, content}) in each record."""
    prompt_key: Annotated[str, Field(min_length=1)] | None = None
    """Key of a plain-text prompt; set with responseKey to read prompt/response records instead of chats."""
    response_key: Annotated[str, Field(min_length=1)] | None = None
    """Key of the plain-text response; set with promptKey."""
    teacher_input_key: Annotated[str, Field(min_length=1)] | None = None
    """Key of what the teacher sees instead of the student's prompt (context distillation)."""
    max_samples: PositiveInt | None = None
    """Read only the first this many records, in file order (bad ones skipped under onBadRecord skip count
    among them); the rest are never read, e.g. to train on the head of a set too large to hold. Unset: every
    record."""


class MixtureSource(DataSource):
    weight: Annotated[float, Field(gt=0.0)]
    """This source's share of every epoch, relative to the other sources' weights (they need not sum to 1)."""


class DataSpec(SpecModel):
    train: DataSource | None = None
    """Training records from one source; or spec.data.mixture (exactly one of the two)."""
    mixture: Annotated[list[MixtureSource], Field(min_length=2, max_length=64)] | None = None
    """Training records from several sources by weight, instead of spec.data.train. An epoch has as many
    samples as all the sources hold together (so as many steps as without weights); source i supplies
    round(weight_i / sum of weights x that total) of them (largest remainders, so they add up exactly), drawn
    from an endless series of seeded shuffles of its own records: a source given more than it holds repeats
    records, one given fewer takes others each epoch, going on where the last epoch stopped. The epoch's
    samples are then shuffled together. All of it follows from spec.training.seed and the epoch, so a resumed
    job trains on the batches an uninterrupted one would. At most 64 sources."""
    eval: DataSource | None = None
    """Held-out records for the eval loss and teacher agreement."""
    max_length: PositiveInt = 4096
    """Longest prompt plus response in tokens; longer records are cut (the response's end first)."""
    prompt_max_length: PositiveInt = 2048
    """Longest prompt in tokens; longer prompts lose their beginning."""
    apply_chat_template: bool = True
    """Format records with the tokenizer's chat template."""
    chat_template: Annotated[str, Field(min_length=1)] | None = None
    """A Jinja chat template file (inside the pods) used instead of the student's own, e.g. a model's
    training variant; the teacher renders with it too where it reads the student's tokens."""
    chat_template_kwargs: dict[
        str, Annotated[Any, WithJsonSchema({"x-kubernetes-preserve-unknown-fields": True})]
    ] = {}
    """Switches the chat template reads besides the messages, e.g. enable_thinking: false for Qwen3."""
    train_turns: TrainTurns = TrainTurns.ALL
    """Which assistant messages of a chat are trained: all, each as the template renders it when it is
    generated (a template that re-renders earlier turns once later ones follow, like Qwen3's, which drops
    their reasoning, makes one sample per such turn), or only the last, in one sample (as KDFlow)."""
    on_bad_record: OnBadRecord = OnBadRecord.FAIL
    """A malformed record stops the job (naming file:line) or is skipped and counted."""

    @property
    def training_sources(self) -> list[tuple[str, DataSource]]:
        """(field path, source) of each training source: spec.data.train, or each of spec.data.mixture."""
        if self.mixture is not None:
            return [(f"spec.data.mixture[{i}]", source) for i, source in enumerate(self.mixture)]
        return [] if self.train is None else [("spec.data.train", self.train)]


class TrainingSpec(SpecModel):
    epochs: PositiveInt = 1
    """Passes over the training data."""
    max_steps: PositiveInt | None = None
    """Stop after this many optimizer steps, whatever epochs says."""
    global_batch_size: PositiveInt = 128
    """Sequences per optimizer step, over all student ranks."""
    micro_batch_size: PositiveInt = 1
    """Sequences per forward/backward on one rank (ignored when maxTokensPerDevice is set)."""
    learning_rate: Annotated[float, Field(gt=0.0)] = 1.0e-6
    """Peak learning rate of AdamW."""
    lr_scheduler: LrScheduler = LrScheduler.COSINE_WITH_MIN_LR
    """Learning-rate schedule after the linear warm-up: cosine or linear decay to minLearningRate, cosine
    decays restarting from the peak (lrCycles of them), warmup-stable-decay (the peak until the last
    lrDecayRatio of the steps, then a linear decay), or constant."""
    warmup_ratio: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.05
    """Share of the steps spent warming the learning rate up from zero."""
    min_learning_rate: Annotated[float, Field(ge=0.0)] = 1.0e-8
    """Floor the schedule decays to."""
    lr_cycles: PositiveInt = 2
    """cosineWithRestarts: how many cosine decays share the steps after the warm-up."""
    lr_decay_ratio: Annotated[float, Field(gt=0.0, le=1.0)] = 0.1
    """wsd: share of the steps spent decaying to minLearningRate at the end."""
    max_grad_norm: Annotated[float, Field(gt=0.0)] = 1.0
    """Gradients are clipped to this global norm."""
    weight_decay: Annotated[float, Field(ge=0.0)] = 0.0
    """AdamW weight decay."""
    adam_betas: Annotated[
        list[Annotated[float, Field(ge=0.0, lt=1.0)]], Field(min_length=2, max_length=2)
    ] = [
        0.9,
        0.98,
    ]
    """AdamW (beta1, beta2)."""
    seed: Annotated[int, Field(ge=0)] = 42
    """Seed of data order, initialisation of new weights and sampling."""
    precision: Precision = Precision.BF16
    """Compute precision of the student (bf16 mixed precision keeps fp32 master weights) and the teacher."""
    max_tokens_per_device: PositiveInt | None = None
    """Dynamic batching: form micro-batches by this token budget instead of microBatchSize."""
    packing: bool = True
    """Padding-free packing: each micro-batch's sequences share one row, each attending only to itself, so no
    compute goes to padding; with maxTokensPerDevice the budget is the row's total tokens (whole sequences,
    first-fit decreasing), without it a row holds microBatchSize sequences. Same losses and gradients as
    padded rows; vision-language students always use padded rows."""
    log_every_steps: PositiveInt = 10
    """Log a progress line (step, loss, step time, tokens per second) every this many steps; /metrics and
    metrics.jsonl have every step."""
    eval_every_steps: PositiveInt | None = None
    """Evaluate on data.eval every this many steps (and always at the end)."""
    on_non_finite: OnNonFinite = OnNonFinite.FAIL
    """A NaN or infinite loss fails the job, or its step is skipped (and counted)."""


class CheckpointSpec(SpecModel):
    path: Annotated[str, Field(min_length=1)] | None = None
    """Directory for checkpoints (shared by all pods); the job resumes from the newest one found there."""
    every_steps: PositiveInt = 100
    """Save every this many optimizer steps (and at the end)."""
    keep: PositiveInt = 3
    """Newest checkpoints kept; older ones are deleted after a save succeeds."""
    resume_from: Annotated[str, Field(min_length=1)] | None = None
    """Start from another job's checkpoint (a `step-NNNNNNNN` folder, or a checkpoint path whose newest one
    is taken): this job takes its student weights and trains them on its own data with its own schedule from
    step 0, e.g. to continue with new data. Only while `path` holds no checkpoint of this job: a re-run
    resumes from its own. Without it, a checkpoint of another job in `path` is refused."""


class OutputSpec(SpecModel):
    path: Annotated[str, Field(min_length=1)] | None = None
    """Where the trained student is exported (safetensors and tokenizer)."""
    rollout_rounds: Annotated[int, Field(ge=0)] = 20
    """On-policy: the newest rounds whose sampled responses are kept in `<path>/rollouts/step-N.jsonl`
    (one file a round, named for the first step trained on it); 0 keeps none."""


class HeadSpec(SpecModel):
    cpu: Quantity = "4"
    """CPU of the Ray head pod, which runs the trainer driver."""
    memory: Quantity = "32Gi"
    """Memory of the Ray head pod."""
    node_selector: dict[str, str] = {}
    """Node selector of the Ray head pod. The head needs no GPU, so it does not take
    spec.cluster.nodeSelector (the GPU workers'); without one it prefers nodes without GPUs."""
    tolerations: list[KubernetesObject] = []
    """Tolerations of the Ray head pod (Kubernetes Toleration objects); not spec.cluster.tolerations (the GPU
    workers')."""


class WorkerSpec(SpecModel):
    cpu_per_gpu: Quantity = "8"
    """CPU requested per GPU on worker pods."""
    memory_per_gpu: Quantity = "64Gi"
    """Memory requested per GPU on worker pods."""
    extra_resources: dict[str, Quantity] = {}
    """Further extended resources of every worker pod, requested and limited alike, e.g. `rdma/ib: "1"` for
    an InfiniBand device of the RDMA device plugin, so NCCL between nodes runs over RDMA instead of TCP."""
    annotations: dict[str, str] = {}
    """Annotations of every worker pod, e.g. `k8s.v1.cni.cncf.io/networks` for the Multus secondary networks
    (InfiniBand or RoCE interfaces) NCCL uses between nodes."""
    ipc_lock: bool = False
    """Give the worker containers the IPC_LOCK capability, with which RDMA pins memory beyond the memlock
    limit. IPC_LOCK is in neither the restricted nor the baseline Pod Security profile: the worker pods
    then need a namespace whose enforced level is privileged."""


class ClusterSpec(SpecModel):
    image: Annotated[str, Field(min_length=1)] | None = None
    """Runtime image of the Ray pods; the operator's default image when unset."""
    node_selector: dict[str, str] = {}
    """Node selector of the GPU worker pods (e.g. to pick an H100 or H20 pool); the head has its own
    (spec.cluster.head.nodeSelector)."""
    tolerations: list[KubernetesObject] = []
    """Tolerations of the GPU worker pods (Kubernetes Toleration objects); the head has its own."""
    gpu_resource: Annotated[str, Field(min_length=1)] = "nvidia.com/gpu"
    """Extended resource name of a GPU."""
    gpus_per_node: PositiveInt = 8
    """GPUs of one node: the most one worker pod asks for."""
    colocate: bool = False
    """Teacher, student (and rollout) share the same GPUs, taking turns (SGLang sleep/wake-up)."""
    shm_size: Quantity = "64Gi"
    """Size of the memory-backed /dev/shm of every Ray pod."""
    termination_grace_period_seconds: PositiveInt = 300
    """Seconds a Ray pod has between SIGTERM and SIGKILL when it is stopped (eviction, preemption, a node
    drain, `helm uninstall`): the trainer finishes its step and writes a checkpoint in that time, which a
    large student's checkpoint needs more of than Kubernetes' default 30."""
    volumes: list[KubernetesObject] = []
    """Extra pod volumes (Kubernetes Volume objects), e.g. PVCs holding models, data and checkpoints."""
    volume_mounts: list[KubernetesObject] = []
    """Mounts of those volumes in every Ray container (Kubernetes VolumeMount objects)."""
    env: list[KubernetesObject] = []
    """Extra environment of every Ray container (Kubernetes EnvVar objects)."""
    queue_name: Annotated[str, Field(min_length=1)] | None = None
    """Kueue LocalQueue to admit the job through."""
    priority_class_name: Annotated[str, Field(min_length=1)] | None = None
    """PriorityClass of every Ray pod."""
    service_account_name: Annotated[str, Field(min_length=1)] | None = None
    """ServiceAccount of every Ray pod."""
    image_pull_secrets: list[KubernetesObject] = []
    """Secrets to pull the image from a private registry (Kubernetes LocalObjectReference objects)."""
    head: HeadSpec = HeadSpec()
    """Resources and placement of the Ray head pod."""
    worker: WorkerSpec = WorkerSpec()
    """Resources, annotations and capabilities of the worker pods."""


class DistillationJobSpec(SpecModel):
    mode: Mode = Mode.OFF_POLICY
    """offPolicy distills on dataset responses, onPolicy on the student's own samples, selfDistillation from
    the student's own (earlier or averaged) weights (on dataset responses, or on the student's own samples
    with a rollout section), sft trains on the data alone, preference by DPO on pairs of the teacher's
    answer over the student's own, reinforcement by GRPO on the student's own samples with the teacher's
    judgement as the reward."""
    teacher: TeacherSpec | None = None
    """The teacher; required for offPolicy and onPolicy, optional for selfDistillation, absent for sft (unless
    it generates the training responses, spec.generation)."""
    teachers: Annotated[list[WeightedTeacherSpec], Field(min_length=2, max_length=8)] | None = None
    """Several teachers instead of spec.teacher (offPolicy and onPolicy, vanilla algorithm): the student
    learns from the weighted mixture of their next-token distributions, each teacher its own engines."""
    student: StudentSpec
    """The model being trained."""
    rollout: RolloutSpec | None = None
    """Generation of on-policy samples: required for onPolicy; with selfDistillation, the student learns
    from its own samples too (on-policy self-distillation); not allowed otherwise."""
    preference: PreferenceSpec | None = None
    """Settings of mode preference (DPO); its defaults when left out."""
    reinforcement: ReinforcementSpec | None = None
    """Settings of mode reinforcement (GRPO); its defaults when left out."""
    generation: GenerationSpec | None = None
    """Responses to the training prompts written by a teacher (the job's own or an OpenAI-compatible
    endpoint) before training, then trained on with sft, or offPolicy with the job's own teacher."""
    distillation: DistillationSpec = DistillationSpec()
    """What is distilled and how."""
    data: DataSpec
    """Training and evaluation data."""
    training: TrainingSpec = TrainingSpec()
    """Optimisation."""
    checkpoint: CheckpointSpec = CheckpointSpec()
    """Periodic checkpoints, from which a restarted job resumes."""
    output: OutputSpec = OutputSpec()
    """Export of the trained student."""
    tracking: TrackingSpec = TrackingSpec()
    """Experiment trackers (TensorBoard, MLflow, W&B) that get every record `metrics.jsonl` gets."""
    cluster: ClusterSpec = ClusterSpec()
    """Placement and pod settings on Kubernetes (ignored by local runs)."""
    suspend: bool = False
    """Hold the job without a Ray cluster; set false to start (Kueue sets it too)."""
    backoff_limit: Annotated[int, Field(ge=0)] = 2
    """Retries of the whole Ray job, each resuming from the newest checkpoint."""
    active_deadline_seconds: PositiveInt | None = None
    """Wall-clock limit of one attempt, not of the whole job: KubeRay starts the clock each time it creates
    the job's Ray cluster (at the start, on every retry of spec.backoffLimit, on every resume after a
    suspension), so a job may run backoffLimit + 1 such spans. An attempt past it fails the job without a
    retry (reason ActiveDeadlineExceeded)."""
    pre_running_deadline_seconds: PositiveInt = 3600
    """Limit on the wait for the Ray cluster to run (pods scheduled, images pulled, Ray started), counted
    from each attempt's start like activeDeadlineSeconds; time queued while suspended does not count. An
    attempt past it fails (reason PreRunningDeadlineExceeded) and is retried within spec.backoffLimit."""
    ttl_seconds_after_finished: Annotated[int, Field(ge=0)] = 60
    """Seconds the finished Ray cluster (GPU workers included) is kept before it is deleted; the student is
    exported before the job ends, so the default frees the GPUs within a minute. Raise it (e.g. 86400) to
    keep a finished cluster for debugging."""

    def as_each_teacher(self) -> list["DistillationJobSpec"]:
        """With spec.teachers: the spec once per teacher, that teacher as spec.teacher (its weight left out)
        and no spec.teachers; what each teacher's engines, pods and layout rules are made from. Without: the
        spec itself."""
        if self.teachers is None:
            return [self]
        return [
            self.model_copy(
                update={
                    "teacher": TeacherSpec(**{name: getattr(t, name) for name in TeacherSpec.model_fields}),
                    "teachers": None,
                }
            )
            for t in self.teachers
        ]

    @property
    def on_policy(self) -> bool:
        """Whether the student trains on its own samples (onPolicy, or selfDistillation with a rollout
        section) rather than on the dataset's responses."""
        sampled_self_distillation = self.mode == Mode.SELF_DISTILLATION and self.rollout is not None
        return self.mode in (Mode.ON_POLICY, Mode.REINFORCEMENT) or sampled_self_distillation

    @property
    def mixes_policies(self) -> bool:
        """Whether on-policy steps alternate with steps on the dataset's responses (spec.rollout.lmbda below
        1): the training data keeps its responses, and the student answers the prompts of some steps."""
        return self.on_policy and self.rollout is not None and self.rollout.lmbda < 1.0
