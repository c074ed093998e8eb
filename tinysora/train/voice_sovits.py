"""`tinysora train voice`: the SoVITS generator (``tinysora.voice.sovits``), GAN-trained
on the corpus with the frozen content codes (``tinysora train voice-content``).

Each step: the generator decodes a random 0.64 s segment of the posterior latent; the
discriminators (multi-period + scale) learn real vs generated (LSGAN), then the generator
learns from adversarial + feature matching + 45 x mel L1 + KL(posterior || prior). The
codes are frozen (the codec was pretrained with its commitment loss), so no commitment
term is left here. The reference voice of an example is another utterance of the same
speaker, and ``no_text`` of the examples drop their phonemes (``[<bos>]`` only), which is
how voice conversion runs without a transcript.

The loop is the shared ``train.trainer.Trainer`` (schedule, clipping, logs, atomic
checkpoints, resume); the discriminators are its ``Auxiliary`` network, stepped by the
loss before the generator's part. (Run directories of the earlier SoVITS loop, whose
checkpoints held ``generator.safetensors`` and optimizer state by parameter index, do not
resume; ``--init`` still starts from them.)

Output directory::

    OUT/features/           log-mels, samples and codes of the corpus splits
    OUT/checkpoints/        the one Trainer's: the generator as its model, the
                            discriminators as its auxiliary network, both optimizers
                            (atomic, resumable)
    OUT/log.jsonl           losses, lr, s/step; validation mel L1 of held-out sentences
    OUT/samples/step_N/     resynthesized held-out sentences (wav)
    OUT/model/              content/ + sovits/ (config.json + model.safetensors): the voice
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from tinysora.config import Config
from tinysora.device import resolve_device, to_device
from tinysora.io.checkpoint import check_state, load_pretrained, load_tensors, save_pretrained
from tinysora.train.trainer import (
    Auxiliary,
    TrainConfig,
    Trainer,
    check_run_dir,
    init_checkpoint,
    step_generator,
)
from tinysora.voice.audio import (
    SpectrogramConfig,
    linear_spectrogram,
    mel_matrix,
    mel_spectrogram,
    save_audio,
)
from tinysora.voice.content import ContentModel
from tinysora.voice.data import Split, load_split
from tinysora.voice.sovits import (
    MultiDiscriminator,
    SoVITSConfig,
    SynthesizerTrn,
    discriminator_loss,
    feature_loss,
    generator_loss,
    kl_loss,
    slice_segments,
    spectrogram_config,
)
from tinysora.voice.text import PhonemeVocab


@dataclass
class VoiceDataConfig(Config):
    corpus: str = "runs/voice/corpus"
    content: str = "runs/voice/content/content"  # the content model directory
    batch_size: int = 8
    max_frames: int = 300  # longer utterances are cropped to a random 6 s window
    max_ref_frames: int = 300
    no_text: float = 0.2  # share of examples without phonemes (voice conversion)


@dataclass
class VoiceLossConfig(Config):
    mel: float = 45.0
    kl: float = 1.0
    feature: float = 1.0
    adversarial: float = 1.0


@dataclass
class VoiceRecipe(Config):
    data: VoiceDataConfig = field(default_factory=VoiceDataConfig)
    model: SoVITSConfig = field(default_factory=SoVITSConfig)
    loss: VoiceLossConfig = field(default_factory=VoiceLossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    val_utterances: int = 8


def make_batch(
    split: Split, recipe: VoiceRecipe, ids: list[int], g: torch.Generator, bos: int, no_text: float
) -> dict:
    """Padded tensors of utterances ``ids``: codes, samples, phonemes, a reference."""
    c, hop = recipe.model, recipe.model.hop
    items = []
    for i in ids:
        codes = split.utterance_codes(i)  # (n_q, T')
        t_codes = codes.shape[1]
        max_codes = recipe.data.max_frames // 2
        start = int(torch.randint(max(1, t_codes - max_codes + 1), (1,), generator=g))
        codes = codes[:, start : start + max_codes]
        frames = 2 * codes.shape[1]
        first = (int(split.data.offsets[i]) + 2 * start) * hop
        wav = split.data.wav[first : first + frames * hop].float()
        phones = split.data.utterance_phonemes(i)
        if float(torch.rand(1, generator=g)) < no_text:
            phones = torch.tensor([bos])
        peers = split.by_speaker[int(split.data.speaker[i])]
        others = [j for j in peers if j != i] or [i]
        ref = others[int(torch.randint(len(others), (1,), generator=g))]
        ref_mel = split.data.utterance_mel(ref)[:, : recipe.data.max_ref_frames]
        items.append((codes, frames, wav, phones, ref_mel))
    b = len(items)
    t_max = max(x[1] for x in items)
    p_max = max(len(x[3]) for x in items)
    r_max = max(x[4].shape[1] for x in items)
    batch = {
        "codes": torch.zeros(b, c.n_quantizers, t_max // 2, dtype=torch.int64),
        "wav": torch.zeros(b, t_max * hop),
        "frame_lengths": torch.tensor([x[1] for x in items]),
        "phonemes": torch.zeros(b, p_max, dtype=torch.int64),
        "phone_lengths": torch.tensor([len(x[3]) for x in items]),
        "ref_mel": torch.zeros(b, c.n_mels, r_max),
        "ref_lengths": torch.tensor([x[4].shape[1] for x in items]),
    }
    for k, (codes, _frames, wav, phones, ref_mel) in enumerate(items):
        batch["codes"][k, :, : codes.shape[1]] = codes
        batch["wav"][k, : len(wav)] = wav
        batch["phonemes"][k, : len(phones)] = phones
        batch["ref_mel"][k, :, : ref_mel.shape[1]] = ref_mel
    return batch


class GANStep:
    """The SoVITS recipe's pieces for the Trainer: batches of a step, the two-part loss
    (the discriminators' step, then the generator's loss) and the validation."""

    def __init__(self, recipe: VoiceRecipe, out: Path, train: Split, val: Split, bos: int):
        self.recipe, self.out, self.train, self.val, self.bos = recipe, out, train, val, bos
        self.spec: SpectrogramConfig = spectrogram_config(recipe.model)
        self.mel_fb = mel_matrix(self.spec)
        self.disc = MultiDiscriminator(recipe.model.disc_channels)
        self.auxiliary = Auxiliary({"discriminator": self.disc})
        self.trainer: Trainer | None = None  # set once the Trainer exists (its step)

    def mel(self, wav: torch.Tensor) -> torch.Tensor:
        return mel_spectrogram(wav, self.spec, self.mel_fb.to(wav.device))

    def batch(self, step: int) -> dict:
        """Step ``step``'s examples (a function of the seed and the step); ``generator``:
        the step's draws of segments and posterior noise."""
        g = step_generator(self.recipe.train.seed, step)
        ids = torch.randint(len(self.train.data), (self.recipe.data.batch_size,), generator=g)
        batch = make_batch(
            self.train, self.recipe, ids.tolist(), g, self.bos, self.recipe.data.no_text
        )
        return {**batch, "generator": g}

    def loss(self, gen: SynthesizerTrn, batch: dict) -> tuple[torch.Tensor, dict]:
        c, w = self.recipe.model, self.recipe.loss
        batch = {**batch, "spec": linear_spectrogram(batch["wav"], self.spec)}
        out = gen(batch, batch["generator"])
        seg = c.segment_frames * c.hop
        real = slice_segments(batch["wav"][:, None], out["starts"] * c.hop, seg)
        fake = out["wav"]
        r, f, _, _ = self.disc(real, fake.detach())
        loss_d = discriminator_loss(r, f)
        grad_d = self.auxiliary.update("discriminator", loss_d)
        r, f, fr, ff = self.disc(real, fake)
        mel_l1 = F.l1_loss(self.mel(fake[:, 0]), self.mel(real[:, 0]))
        kl = kl_loss(out["z_p"], out["logs_q"], out["m_p"], out["logs_p"], out["mask"])
        adv, fm = generator_loss(f), feature_loss(fr, ff)
        loss_g = w.adversarial * adv + w.feature * fm + w.mel * mel_l1 + w.kl * kl
        metrics = {"loss_d": loss_d, "mel_l1": mel_l1, "kl": kl, "adv": adv, "fm": fm}
        return loss_g, {**{k: v.detach() for k, v in metrics.items()}, "grad_d": grad_d}

    def validate(self, gen: SynthesizerTrn) -> dict[str, float]:
        """Resynthesis of held-out sentences (their codes + phonemes, another utterance of
        the voice as reference): mel L1 against the real audio; wavs into OUT/samples."""
        n = min(self.recipe.val_utterances, len(self.val.data))
        folder = self.out / "samples" / f"step_{self.trainer.step:08d}"
        device = next(gen.parameters()).device
        losses = []
        for i in range(n):
            g = torch.Generator().manual_seed(i)
            batch = to_device(make_batch(self.val, self.recipe, [i], g, self.bos, 0.0), device)
            wav = gen.infer(
                batch["codes"],
                batch["phonemes"],
                batch["ref_mel"],
                generator=torch.Generator().manual_seed(i),
            )
            real = batch["wav"][0, : len(wav)]
            losses.append(float(F.l1_loss(self.mel(wav[None]), self.mel(real[None]))))
            save_audio(folder / f"{i:02d}.wav", wav.cpu(), self.spec.sample_rate)
        return {"val_mel_l1": sum(losses) / len(losses)}


def warm_start(gen: SynthesizerTrn, disc: MultiDiscriminator, run: Path) -> int:
    """Fine-tune from another run: its latest generator and discriminator weights (not
    its optimizers or step), except the prior's frozen codebooks, which stay this
    recipe's content model's (the decoder, flow and posterior carry over to new codes).
    Returns the step the weights come from."""
    path, state = init_checkpoint(run, "train voice")
    keep = lambda state: {k: v for k, v in state.items() if not k.startswith("prior.codebooks.")}  # noqa: E731
    # (a run of the earlier SoVITS loop named the generator's file generator.safetensors)
    name = "model" if (path / "model.safetensors").is_file() else "generator"
    weights = keep(load_tensors(path / f"{name}.safetensors"))
    check_state(keep(gen.state_dict()), weights, str(path))
    gen.load_state_dict(weights, strict=False)
    disc_weights = load_tensors(path / "discriminator.safetensors")
    check_state(disc.state_dict(), disc_weights, str(path))
    disc.load_state_dict(disc_weights)
    return int(state["step"])


def train_voice(
    config_path: str | Path,
    out: str | Path,
    resume: bool = False,
    stop_at: int | None = None,
    device: str | None = None,
    init: str | Path | None = None,
) -> Path:
    recipe = VoiceRecipe.load(config_path)
    out = Path(out)
    check_run_dir(out, resume)
    device = resolve_device(device)
    out.mkdir(parents=True, exist_ok=True)
    if recipe.train.threads:
        torch.set_num_threads(recipe.train.threads)
    content = load_pretrained(ContentModel, recipe.data.content)
    vocab = PhonemeVocab(Path(recipe.data.corpus) / "phonemes.txt")
    codec = content.config.codec
    recipe.model.n_phonemes = len(vocab)
    recipe.model.code_dim, recipe.model.codebook_size = codec.code_dim, codec.codebook_size
    recipe.model.n_quantizers = codec.n_quantizers
    recipe.save(out / "recipe.json")
    spec, corpus = spectrogram_config(recipe.model), recipe.data.corpus
    train = load_split(corpus, spec, out, "train", content)
    val = load_split(corpus, spec, out, "test_seen", content, train.data.speakers)
    torch.manual_seed(recipe.train.seed)
    gen = SynthesizerTrn(recipe.model)
    step = GANStep(recipe, out, train, val, vocab.bos)
    with torch.no_grad():  # the frozen codebooks, copied from the content model
        for book, vq in zip(gen.prior.codebooks, content.codec.quantizers, strict=True):
            book.weight.copy_(vq.codebook)
    gen.to(device)
    step.disc.to(device)
    trainer = Trainer(
        gen,
        recipe.train,
        out,
        step.loss,
        step.batch,
        eval_fn=step.validate,
        auxiliary=step.auxiliary,
    )
    step.trainer = trainer
    if resume and trainer.load_checkpoint():
        print(f"resumed from step {trainer.step}")
    elif init is not None:
        print(f"initialized from {init} (step {warm_start(gen, step.disc, Path(init))})")
    trainer.fit(stop_at)
    model_dir = out / "model"
    save_pretrained(content, content.config, model_dir / "content")
    save_pretrained(gen.eval().cpu(), recipe.model, model_dir / "sovits")
    shutil.copyfile(Path(recipe.data.corpus) / "phonemes.txt", model_dir / "phonemes.txt")
    print(f"saved {model_dir}")
    return model_dir
