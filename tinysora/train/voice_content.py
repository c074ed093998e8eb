"""`tinysora train voice-content`: the content encoder and the semantic codes, in stages
(each resumable; a finished stage leaves its file and is skipped on ``--resume``):

1. ``features/*.safetensors``: log-mels of the corpus splits (``tinysora.voice.data``);
2. ``units1.safetensors``: k-means of the train frames' MFCCs (HuBERT iteration 1's targets);
3. ``iter1/``: the encoder trained by masked prediction of those units;
4. ``units2.safetensors``: k-means of iteration 1's features;
5. ``iter2/``: a fresh encoder trained on them (HuBERT iteration 2);
5b. ``refine/`` (when ``refine_steps`` > 0): iteration 2's encoder fine-tuned on the same
   units plus, on the features the codec reads, a CTC loss against the transcripts'
   phones (``phone_ctc``) and a gradient-reversed per-frame speaker classifier
   (``speaker_adversarial``): semi-supervised, since the corpus has transcripts anyway;
6. ``codec/``: stride-2 conv + residual VQ on the final encoder's features;
7. ``content/``: the frozen encoder + codec (config.json + model.safetensors), and
   ``probes.json``: what the codes carry (``tinysora.eval.voice_codes``).
"""

from __future__ import annotations

import json
import math
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
    warp_mel,
)
from tinysora.voice.data import Utterances, build_utterances, crop_batch, load_utterances
from tinysora.voice.probes import phone_table, probe_codes
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
    # what the codec learns from: "units" (predict iteration 2's units of both frames of a
    # code: content) or "features" (reconstruct them: content and speaker)
    codec_target: str = "features"
    codec_speaker_adversarial: float = 0.0  # > 0: gradient-reversed speaker classifier
    probe_utterances: int = 1500  # train utterances the probes learn from
    probe_steps: int = 400
    # stage 5b: fine-tune iteration 2 (0 = off) with the phone CTC and speaker adversary
    # weights below on the codec's input features; its crops should hold whole utterances
    refine_steps: int = 0
    refine_crop_frames: int = 360
    phone_ctc: float = 0.0
    speaker_adversarial: float = 0.0


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


def _labels_batch(
    data: Utterances, labels: torch.Tensor, recipe, step: int, frames: int | None = None
):
    """(mel, lengths, unit targets, masked frames, utterance ids, crop starts)."""
    g = step_generator(recipe.train.seed, step)
    frames = frames or recipe.data.crop_frames
    mel, lengths, ids, starts = crop_batch(data, frames, recipe.data.batch_size, g)
    target = torch.full(mel.shape[::2], -100, dtype=torch.int64)  # (B, T); -100 = ignore
    for b, (i, s, n) in enumerate(
        zip(ids.tolist(), starts.tolist(), lengths.tolist(), strict=True)
    ):
        first = int(data.offsets[i]) + s
        target[b, :n] = labels[first : first + n].long()
    masked = span_mask(target.shape, recipe.model.mask_start, recipe.model.mask_span, g)
    if recipe.model.warp > 0:  # the student hears another voice; the units are the clean one's
        log_range = math.log(1 + recipe.model.warp)
        factors = torch.exp((2 * torch.rand(len(mel), generator=g) - 1) * log_range)
        mel = warp_mel(mel, factors)
    return mel, lengths, target, masked & (target >= 0), ids, starts


def masked_prediction_loss(model, batch):
    """HuBERT's loss: cross-entropy of the units of the masked frames."""
    mel, lengths, target, masked = batch[:4]
    _, logits = model(mel, lengths, masked)
    loss, acc = unit_loss(logits, target, masked)
    return loss, {"unit_acc": acc.detach()}


def unit_loss(logits, target, masked):
    """(cross-entropy, accuracy) of the units of the masked frames."""
    loss = F.cross_entropy(logits[masked].float(), target[masked])
    return loss, (logits[masked].argmax(-1) == target[masked]).float().mean()


def fit_stage(model, cfg: TrainConfig, out: Path, loss_fn, batch_fn, resume: bool) -> Trainer:
    """Train one stage with the shared Trainer, continuing its checkpoint on ``resume``."""
    trainer = Trainer(model, cfg, out, loss_fn, batch_fn)
    if resume and trainer.load_checkpoint():
        print(f"{out.name}: resumed from step {trainer.step}")
    trainer.fit()
    return trainer


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
    trainer = fit_stage(
        model,
        recipe.train,
        out,
        masked_prediction_loss,
        lambda step: _labels_batch(data, labels, recipe, step),
        resume,
    )
    save_tensors(trainer.ema_state(), done)
    model.load_state_dict(load_tensors(done))
    return model.eval()


class GradReverse(torch.autograd.Function):
    """Identity forward; the gradient times -scale backward (adversarial training)."""

    @staticmethod
    def forward(ctx, x, scale: float):
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return -ctx.scale * grad, None


class RefineObjective(torch.nn.Module):
    """Iteration 2's encoder with two heads on its ``feature_layer`` output (what the codec
    reads): a linear CTC phone classifier and, behind gradient reversal, a per-frame
    speaker classifier. Loss = masked unit prediction + ``ctc`` x CTC + speaker CE."""

    def __init__(
        self,
        encoder: ContentEncoder,
        n_phones: int,
        n_speakers: int,
        ctc: float,
        adversarial: float,
    ):
        super().__init__()
        self.encoder, self.ctc, self.adversarial = encoder, ctc, adversarial
        d = encoder.config.dim
        self.phone_head = torch.nn.Linear(d, n_phones + 1)  # + CTC blank (0)
        self.speaker_head = torch.nn.Sequential(
            torch.nn.Linear(d, 256), torch.nn.GELU(), torch.nn.Linear(256, n_speakers)
        )

    def forward(self, mel, lengths, target, masked, phones, speakers):
        """``phones``: [(P_b,) phone classes or None where the crop cuts the utterance]."""
        enc = self.encoder
        feats, _ = enc(mel, lengths, masked, upto=enc.config.feature_layer)
        logits = enc.finish(feats, lengths)
        loss, acc = unit_loss(logits, target, masked)
        metrics = {"unit_acc": acc}
        whole = [b for b, p in enumerate(phones) if p is not None and len(p) > 0]
        if self.ctc > 0:  # logged as 0 in the (rare) batch without a whole utterance
            ctc = torch.zeros(())
            if whole:
                log_probs = self.phone_head(feats[whole]).float().log_softmax(-1).transpose(0, 1)
                tgt = [phones[b] for b in whole]
                n_tgt = torch.tensor([len(t) for t in tgt])
                ctc = F.ctc_loss(
                    log_probs, torch.cat(tgt), lengths[whole], n_tgt, zero_infinity=True
                )
                loss = loss + self.ctc * ctc
            metrics["ctc"] = ctc
        if self.adversarial > 0:
            valid = torch.arange(feats.shape[1])[None] < lengths[:, None]
            spk = self.speaker_head(GradReverse.apply(feats, self.adversarial))[valid]
            who = speakers[:, None].expand_as(valid)[valid]
            adv = F.cross_entropy(spk.float(), who)
            loss = loss + adv
            metrics["speaker_ce"] = adv
            metrics["speaker_acc"] = (spk.argmax(-1) == who).float().mean()
        return loss, {k: v.detach() for k, v in metrics.items()}


def train_refine(
    recipe, data: Utterances, labels: torch.Tensor, iter2: ContentEncoder, out: Path, resume: bool
) -> ContentEncoder:
    """Stage 5b: iteration 2's encoder fine-tuned with ``RefineObjective``."""
    done = out / "encoder.safetensors"
    model = ContentEncoder(iter2.config)
    if done.is_file():
        model.load_state_dict(load_tensors(done))
        return model.eval()
    check_run_dir(out, resume)
    torch.manual_seed(recipe.train.seed)
    model.load_state_dict(iter2.state_dict())
    table = phone_table(PhonemeVocab(Path(recipe.data.corpus) / "phonemes.txt"))
    objective = RefineObjective(
        model.train(), len(table), len(data.speakers), recipe.phone_ctc, recipe.speaker_adversarial
    )
    full = data.lengths()
    targets = [
        torch.tensor([table[p] for p in data.utterance_phonemes(i).tolist() if p in table])
        for i in range(len(data))
    ]

    def batch_fn(step: int):
        mel, lengths, target, masked, ids, starts = _labels_batch(
            data, labels, recipe, step, recipe.refine_crop_frames
        )
        phones = [
            targets[i] if s == 0 and n == full[i] else None
            for i, s, n in zip(ids.tolist(), starts.tolist(), lengths.tolist(), strict=True)
        ]
        return mel, lengths, target, masked, phones, data.speaker[ids]

    train_cfg = TrainConfig(**{**recipe.train.to_dict(), "steps": recipe.refine_steps})
    state = fit_stage(objective, train_cfg, out, lambda m, b: m(*b), batch_fn, resume).ema_state()
    save_tensors(
        {k[len("encoder.") :]: v for k, v in state.items() if k.startswith("encoder.")}, done
    )
    model.load_state_dict(load_tensors(done))
    return model.eval()


class CodecObjective(torch.nn.Module):
    """The codec with its training heads: it learns to predict the iteration's units of
    both 50 Hz frames from each 25 Hz code (``target = "units"``) or to reconstruct the
    features (``"features"``); with ``adversarial`` > 0 a per-frame speaker classifier
    behind gradient reversal pushes the speaker out of the vectors before quantization."""

    def __init__(
        self, codec: SemanticCodec, n_units: int, n_speakers: int, target: str, adversarial: float
    ):
        super().__init__()
        if target not in ("units", "features"):
            raise ValueError(f"codec_target must be 'units' or 'features', got {target!r}")
        self.codec, self.target, self.adversarial = codec, target, adversarial
        d = codec.config.code_dim
        self.unit_head = torch.nn.Linear(d, 2 * n_units) if target == "units" else None
        self.speaker_head = (
            torch.nn.Sequential(
                torch.nn.Linear(d, 256), torch.nn.GELU(), torch.nn.Linear(256, n_speakers)
            )
            if adversarial > 0
            else None
        )

    def forward(self, x, units, speakers, generator):
        """x (B, T, dim) features, units (B, T) labels (-100: padding), speakers (B,)."""
        codec = self.codec
        z = codec.project(x)  # (B, T', code_dim)
        q, _ = codec.quantize(z, generator)
        commit = codec.config.commitment * F.mse_loss(z, q.detach())
        q = z + (q - z).detach()  # straight-through
        valid = units[:, : 2 * z.shape[1]] >= 0  # (B, T)
        metrics = {"commit": commit.detach()}
        if self.unit_head is not None:
            b, t, _ = q.shape
            logits = self.unit_head(q).view(b, 2 * t, -1)  # two frames per code
            main = F.cross_entropy(logits[valid].float(), units[:, : 2 * t][valid].long())
            metrics["unit_ce"] = main.detach()
        else:
            recon = codec.up(q.transpose(1, 2)).transpose(1, 2)
            main = F.mse_loss(recon.float(), x[:, : recon.shape[1]])
            metrics["mse"] = main.detach()
        loss = main + commit
        if self.speaker_head is not None:
            frames = valid[:, ::2]  # (B, T') codes over real frames
            logits = self.speaker_head(GradReverse.apply(z, self.adversarial))[frames]
            target = speakers[:, None].expand_as(frames)[frames]
            adv = F.cross_entropy(logits.float(), target)
            metrics["speaker_ce"] = adv.detach()
            loss = loss + adv
        return loss, metrics


def train_codec(
    recipe, features: torch.Tensor, data: Utterances, units: torch.Tensor, out: Path, resume: bool
) -> SemanticCodec:
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
    offsets, lengths = data.offsets, data.lengths()
    objective = CodecObjective(
        codec,
        recipe.feature_units,
        len(data.speakers),
        recipe.codec_target,
        recipe.codec_speaker_adversarial,
    )

    def batch_fn(step: int):
        g = step_generator(recipe.train.seed, step)
        ids = torch.randint(len(lengths), (recipe.data.batch_size,), generator=g)
        x = torch.zeros(len(ids), frames, features.shape[1])
        labels = torch.full((len(ids), frames), -100, dtype=torch.int64)
        for b, i in enumerate(ids.tolist()):
            n = int(lengths[i]) // 2 * 2
            start = int(torch.randint(max(1, (n - frames) // 2 + 1), (1,), generator=g)) * 2
            take = min(frames, n - start)
            first = int(offsets[i]) + start
            x[b, :take] = features[first : first + take]
            labels[b, :take] = units[first : first + take].long()
        return x, labels, data.speaker[ids], step

    def loss_fn(model, batch):
        x, labels, speakers, step = batch
        return model(x, labels, speakers, step_generator(recipe.train.seed + 1, step))

    train_cfg = TrainConfig(
        **{
            **recipe.train.to_dict(),
            "steps": recipe.codec_steps,
            "lr": recipe.codec_lr,
            "ema_decay": 0.0,
            "bf16": False,
        }
    )
    fit_stage(objective, train_cfg, out, loss_fn, batch_fn, resume)
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
    iter1 = train_iteration(
        recipe, data, load_tensors(path1)["units"], recipe.mfcc_units, out / "iter1", resume
    )
    path2 = out / "units2.safetensors"
    if not path2.is_file():
        feats = frame_features(iter1.features, data, desc="iteration 1 features")
        save_tensors({"units": unit_labels(feats, recipe.feature_units, sample, seed + 1)}, path2)
    units2 = load_tensors(path2)["units"]
    iter2 = train_iteration(recipe, data, units2, recipe.feature_units, out / "iter2", resume)
    if recipe.refine_steps > 0:
        iter2 = train_refine(recipe, data, units2, iter2, out / "refine", resume)
    feats = frame_features(iter2.features, data, desc="content features")
    codec = train_codec(recipe, feats, data, units2, out / "codec", resume)
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
    probes = probe_codes(
        model.eval(),
        splits["train"],
        splits["test_seen"],
        vocab,
        recipe.probe_utterances,
        recipe.probe_steps,
    )
    atomic_write_text(out / "probes.json", json.dumps(probes, indent=1))
    print(", ".join(f"{k} {v:.4g}" for k, v in probes.items()))
    return path
