"""`tinysora train voice-content`: the content encoder and the semantic codes, in stages
(each resumable; a finished stage leaves its file and is skipped on ``--resume``):

1. ``features/*.safetensors``: log-mels of the corpus splits (``tinysora.voice.data``);
2. ``units1.safetensors``: k-means of the train frames' MFCCs (HuBERT iteration 1's targets);
3. ``iter1/``: the encoder trained by masked prediction of those units;
4. ``units2.safetensors``: k-means of iteration 1's features;
5. ``iter2/``: a fresh encoder trained on them (HuBERT iteration 2);
6. ``codec/``: stride-2 conv + residual VQ autoencoding iteration 2's features;
7. ``content/``: the frozen encoder + codec (config.json + model.safetensors), and
   ``probes.json``: what the codes carry (``tinysora.eval.voice_codes``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

from tinysora.config import Config
from tinysora.io.atomic import atomic_write_text
from tinysora.io.checkpoint import load_tensors, save_pretrained, save_tensors
from tinysora.train.trainer import TrainConfig, Trainer, check_run_dir, step_generator
from tinysora.voice.audio import SpectrogramConfig
from tinysora.voice.content import (
    CodecConfig,
    ContentConfig,
    ContentEncoder,
    ContentModel,
    ContentModelConfig,
    SemanticCodec,
    kmeans,
    mfcc,
    nearest,
    span_mask,
)
from tinysora.voice.data import Utterances, build_utterances, crop_batch, load_utterances
from tinysora.voice.probes import probe_codes
from tinysora.voice.text import PhonemeVocab

SPLITS = ("train", "test_seen", "test_unseen")


@dataclass
class ContentDataConfig(Config):
    corpus: str = "runs/voice/corpus"
    crop_frames: int = 200  # 4 s windows
    batch_size: int = 16
    kmeans_frames: int = 60_000  # frames sampled for each k-means


@dataclass
class VoiceContentRecipe(Config):
    data: ContentDataConfig = field(default_factory=ContentDataConfig)
    model: ContentConfig = field(default_factory=ContentConfig)
    codec: CodecConfig = field(default_factory=CodecConfig)
    train: TrainConfig = field(default_factory=TrainConfig)  # each HuBERT iteration
    mfcc_units: int = 100
    feature_units: int = 500
    codec_steps: int = 1500
    codec_lr: float = 1e-3
    probe_utterances: int = 1500  # train utterances the probes learn from
    probe_steps: int = 400


def split_features(recipe: VoiceContentRecipe, out: Path) -> dict[str, Utterances]:
    spec, corpus = SpectrogramConfig(), Path(recipe.data.corpus)
    paths = {s: out / "features" / f"{s}.safetensors" for s in SPLITS}
    speakers = None
    for split in SPLITS:
        if not paths[split].is_file():
            build_utterances(corpus / f"{split}.list", paths[split], spec, speakers)
        if split == "train":
            speakers = load_utterances(paths["train"]).speakers
    return {s: load_utterances(p) for s, p in paths.items()}


@torch.no_grad()
def frame_features(fn, data: Utterances, chunk: int = 32, desc: str = "features") -> torch.Tensor:
    """fn((1, n_mels, T) log-mel) -> (1, T, D) applied to every utterance, concatenated
    to (frames, D) in the split's frame order."""
    out = []
    for i in tqdm(range(len(data)), desc=desc, leave=False):
        out.append(fn(data.utterance_mel(i)[None])[0].float())
    return torch.cat(out)


def unit_labels(features: torch.Tensor, k: int, sample: int, seed: int) -> torch.Tensor:
    """k-means on ``sample`` random frames, then every frame's nearest unit (int16)."""
    g = torch.Generator().manual_seed(seed)
    pick = torch.randperm(len(features), generator=g)[:sample]
    centroids = kmeans(features[pick], k, iters=15, generator=g)
    return nearest(features, centroids)[0].to(torch.int16)


def _labels_batch(data: Utterances, labels: torch.Tensor, recipe, step: int):
    g = step_generator(recipe.train.seed, step)
    mel, lengths, ids, starts = crop_batch(data, recipe.data.crop_frames, recipe.data.batch_size, g)
    target = torch.full(mel.shape[::2], -100, dtype=torch.int64)  # (B, T); -100 = ignore
    for b, (i, s, n) in enumerate(
        zip(ids.tolist(), starts.tolist(), lengths.tolist(), strict=True)
    ):
        first = int(data.offsets[i]) + s
        target[b, :n] = labels[first : first + n].long()
    masked = span_mask(target.shape, recipe.model.mask_start, recipe.model.mask_span, g)
    return mel, lengths, target, masked & (target >= 0)


def masked_prediction_loss(model, batch):
    """HuBERT's loss: cross-entropy of the units of the masked frames."""
    mel, lengths, target, masked = batch
    _, logits = model(mel, lengths, masked)
    loss = F.cross_entropy(logits[masked].float(), target[masked])
    acc = (logits[masked].argmax(-1) == target[masked]).float().mean()
    return loss, {"unit_acc": acc.detach()}


def train_iteration(recipe, data, labels, n_units: int, out: Path, resume: bool) -> ContentEncoder:
    done = out / "encoder.safetensors"
    cfg = ContentConfig(**{**recipe.model.to_dict(), "n_units": n_units})
    model = ContentEncoder(cfg)
    if done.is_file():
        model.load_state_dict(load_tensors(done))
        return model.eval()
    check_run_dir(out, resume)
    torch.manual_seed(recipe.train.seed)
    model = ContentEncoder(cfg)
    trainer = Trainer(model, recipe.train, out, masked_prediction_loss,
                      lambda step: _labels_batch(data, labels, recipe, step))  # fmt: skip
    if resume and trainer.load_checkpoint():
        print(f"{out.name}: resumed from step {trainer.step}")
    trainer.fit()
    save_tensors(trainer.ema_state(), done)
    model.load_state_dict(load_tensors(done))
    return model.eval()


def train_codec(recipe, features: torch.Tensor, offsets, out: Path, resume: bool) -> SemanticCodec:
    done = out / "codec.safetensors"
    codec = SemanticCodec(recipe.codec)
    if done.is_file():
        codec.load_state_dict(load_tensors(done))
        return codec.eval()
    check_run_dir(out, resume)
    torch.manual_seed(recipe.train.seed)
    g = torch.Generator().manual_seed(recipe.train.seed)
    frames = recipe.data.crop_frames // 2 * 2
    with torch.no_grad():  # k-means init of every codebook on the initial projection
        pick = torch.randperm(len(features) // 2, generator=g)[: recipe.data.kmeans_frames]
        pairs = features[: len(features) // 2 * 2].view(-1, 2, features.shape[1])[pick]
        residual = codec.project(pairs).squeeze(1)  # (N, code_dim)
        for vq in codec.quantizers:
            vq.init_from(residual, g)
            residual = residual - vq.codebook[nearest(residual, vq.codebook)[0]]
    lengths = offsets[1:] - offsets[:-1]

    def batch_fn(step: int):
        g = step_generator(recipe.train.seed, step)
        ids = torch.randint(len(lengths), (recipe.data.batch_size,), generator=g)
        out = torch.zeros(len(ids), frames, features.shape[1])
        for b, i in enumerate(ids.tolist()):
            n = int(lengths[i]) // 2 * 2
            start = int(torch.randint(max(1, (n - frames) // 2 + 1), (1,), generator=g)) * 2
            take = min(frames, n - start)
            first = int(offsets[i]) + start
            out[b, :take] = features[first : first + take]
        return out, step

    def loss_fn(model, batch):
        x, step = batch
        recon, codes, commit = model(x, step_generator(recipe.train.seed + 1, step))
        mse = F.mse_loss(recon.float(), x)
        return mse + commit, {"mse": mse.detach(), "commit": commit.detach()}

    train_cfg = TrainConfig(**{**recipe.train.to_dict(), "steps": recipe.codec_steps,
                               "lr": recipe.codec_lr, "ema_decay": 0.0, "bf16": False})  # fmt: skip
    trainer = Trainer(codec, train_cfg, out, loss_fn, batch_fn)
    if resume and trainer.load_checkpoint():
        print(f"codec: resumed from step {trainer.step}")
    trainer.fit()
    save_tensors(codec.state_dict(), done)
    return codec.eval()


def train_voice_content(config_path: str | Path, out: str | Path, resume: bool = False) -> Path:
    recipe = VoiceContentRecipe.load(config_path)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    recipe.save(out / "recipe.json")
    data = split_features(recipe, out)["train"]
    seed, sample = recipe.train.seed, recipe.data.kmeans_frames
    path1 = out / "units1.safetensors"
    if not path1.is_file():
        feats = frame_features(lambda m: mfcc(m).transpose(1, 2), data, desc="mfcc")
        feats = (feats - feats.mean(0)) / (feats.std(0) + 1e-5)
        save_tensors({"units": unit_labels(feats, recipe.mfcc_units, sample, seed)}, path1)
    iter1 = train_iteration(recipe, data, load_tensors(path1)["units"], recipe.mfcc_units,
                            out / "iter1", resume)  # fmt: skip
    path2 = out / "units2.safetensors"
    if not path2.is_file():
        feats = frame_features(iter1.features, data, desc="iteration 1 features")
        save_tensors({"units": unit_labels(feats, recipe.feature_units, sample, seed + 1)}, path2)
    iter2 = train_iteration(recipe, data, load_tensors(path2)["units"], recipe.feature_units,
                            out / "iter2", resume)  # fmt: skip
    feats = frame_features(iter2.features, data, desc="iteration 2 features")
    codec = train_codec(recipe, feats, data.offsets, out / "codec", resume)
    config = ContentModelConfig(
        encoder=ContentConfig(**{**recipe.model.to_dict(), "n_units": recipe.feature_units}),
        codec=recipe.codec,
    )
    model = ContentModel(config)
    model.encoder.load_state_dict(iter2.state_dict())
    model.codec.load_state_dict(codec.state_dict())
    path = save_pretrained(model, config, out / "content")
    print(f"saved {path}")
    splits = split_features(recipe, out)
    vocab = PhonemeVocab(Path(recipe.data.corpus) / "phonemes.txt")
    probes = probe_codes(model.eval(), splits["train"], splits["test_seen"], vocab,
                         recipe.probe_utterances, recipe.probe_steps)  # fmt: skip
    atomic_write_text(out / "probes.json", json.dumps(probes, indent=1))
    print(", ".join(f"{k} {v:.4g}" for k, v in probes.items()))
    return path
