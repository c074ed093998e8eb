"""The DiT training recipe: one TOML file read into :class:`DiTRecipe`.

Sections: ``[model]`` (DiTConfig, or ``preset = "S/2"`` + overrides), ``[train]``
(TrainConfig), ``[flow]`` (FlowConfig), ``[pipeline]`` (sampling defaults of the
exported model), ``[packing]`` (Patch n' Pack on a mixture of sizes, see
:class:`PackingConfig`), ``[tasks]`` (conditioning tasks, see
``tinysora.diffusion.tasks``; combinable with packing), ``[grounding]`` (the grounding
loss, ``tinysora.train.grounding``) and top-level data settings.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from tinysora.config import Config
from tinysora.data.packing import Mixture
from tinysora.diffusion.flow import FlowConfig
from tinysora.diffusion.tasks import TaskConfig
from tinysora.dit.model import DiTConfig
from tinysora.pipeline import PipelineConfig
from tinysora.train.grounding import GroundingConfig
from tinysora.train.trainer import TrainConfig


@dataclass
class PackingConfig(Config):
    """``[packing]``: Patch n' Pack training on clips of mixed sizes and lengths.

    The latent cache then holds ``clips_per_size`` clips of every size of ``mixture``;
    each step packs ``rows`` rows of ``token_budget`` tokens (sizes from
    ``tinysora.data.packing.plan_row``), each clip with its own flow time (shifted by
    its own token count), noise and caption. ``token_drop`` > 0 drops a random fraction
    (uniform in [0, token_drop]) of each video clip's tokens, as NaViT does; rows are
    planned before dropping, so dropping also lowers the packing efficiency.
    """

    enabled: bool = False
    token_budget: int = 1024
    rows: int = 3
    clips_per_size: int = 100
    token_drop: float = 0.0
    mixture: Mixture = field(default_factory=Mixture)


@dataclass
class DiTRecipe(Config):
    """A DiT training recipe (``configs/dit_*.toml``); see ``tinysora.train.dit``."""

    model: DiTConfig = field(default_factory=DiTConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    flow: FlowConfig = field(default_factory=FlowConfig)
    pipeline: PipelineConfig = field(default_factory=PipelineConfig)
    vae: str = ""  # VAE directory that encodes the training clips ("" = the bundled one)
    cache_clips: int = 20_000
    height: int = 64
    width: int = 64
    frames: int = 17
    batch_size: int = 32
    encode_batch: int = 16
    packing: PackingConfig = field(default_factory=PackingConfig)
    tasks: TaskConfig = field(default_factory=TaskConfig)  # tokens given clean per sample
    # subject words' cross-attention onto their objects (train.grounding; world clips of
    # one size)
    grounding: GroundingConfig = field(default_factory=GroundingConfig)
    # a model directory (e.g. `tinysora export RUN -o DIR`) whose DiT weights the run
    # starts from (model and EMA; a fresh optimizer): fine-tuning and annealing stages
    init_from: str = ""
    # a cache of your own clips (`tinysora prepare DATA --out CACHE`) to train on instead of
    # the Shapes World; `tinysora train dit --data CACHE` sets it
    data: str = ""
    # with `data`: the share of each batch drawn from the Shapes World instead (prior
    # preservation: a fine-tune or LoRA keeps what the model could do); 0 = none
    world_mix: float = 0.0
    # prompts the model in training generates every [train] sample_every steps, shown as
    # videos in TensorBoard (at height x width x frames, seed 0)
    sample_prompts: list[str] = field(default_factory=list)
    # validation loss every [train] eval_every steps on this many val-split clips at
    # height x width x frames (tinysora.train.validation); 0 = none
    val_clips: int = 0
