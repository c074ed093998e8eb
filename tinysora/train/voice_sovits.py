"""`tinysora train voice`: the SoVITS generator (``tinysora.voice.sovits``), GAN-trained
on the corpus with the frozen content codes (``tinysora train voice-content``).

Each step: the generator decodes a random 0.64 s segment of the posterior latent; the
discriminators (multi-period + scale) learn real vs generated (LSGAN), then the generator
learns from adversarial + feature matching + 45 x mel L1 + KL(posterior || prior). The
codes are frozen (the codec was pretrained with its commitment loss), so no commitment
term is left here. The reference voice of an example is another utterance of the same
speaker, and ``no_text`` of the examples drop their phonemes (``[<bos>]`` only), which is
how voice conversion runs without a transcript.

Output directory::

    OUT/features/           log-mels, samples and codes of the corpus splits
    OUT/checkpoints/        generator, discriminators, both optimizers (atomic, resumable)
    OUT/log.jsonl           losses, lr, s/step; validation mel L1 of held-out sentences
    OUT/samples/step_N/     resynthesized held-out sentences (wav)
    OUT/model/              content/ + sovits/ (config.json + model.safetensors): the voice
"""

from __future__ import annotations

import json
import math
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

from tinysora.config import Config
from tinysora.device import resolve_device, to_device
from tinysora.io.atomic import atomic_dir, atomic_write_text
from tinysora.io.checkpoint import (
    check_state,
    load_pretrained,
    load_tensors,
    save_pretrained,
    save_tensors,
)
from tinysora.train.board import Board
from tinysora.train.trainer import (
    TrainConfig,
    _flatten_optimizer,
    _unflatten_optimizer,
    check_run_dir,
    init_checkpoint,
    latest_checkpoint,
    lr_at,
    point_latest,
    step_generator,
)
from tinysora.voice.audio import linear_spectrogram, mel_matrix, mel_spectrogram, save_audio
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


def make_batch(split: Split, recipe: VoiceRecipe, ids: list[int], g: torch.Generator,
               bos: int, no_text: float) -> dict:  # fmt: skip
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


class VoiceTrainer:
    """Generator + discriminators, their AdamW optimizers, checkpoints and the loop."""

    def __init__(self, recipe: VoiceRecipe, out: Path, train: Split, val: Split, vocab, device):
        self.recipe, self.out, self.train, self.val = recipe, out, train, val
        self.device = device
        cfg = recipe.train
        self.spec = spectrogram_config(recipe.model)
        self.mel_fb = mel_matrix(self.spec).to(device)
        torch.manual_seed(cfg.seed)
        self.gen = SynthesizerTrn(recipe.model).to(device)
        self.disc = MultiDiscriminator(recipe.model.disc_channels).to(device)
        make = lambda m: torch.optim.AdamW([p for p in m.parameters() if p.requires_grad],  # noqa: E731
                                           lr=cfg.lr, betas=cfg.betas, eps=1e-9)  # fmt: skip
        self.opt_g, self.opt_d = make(self.gen), make(self.disc)
        self.bos = vocab.bos
        self.step = 0

    # ------------------------------------------------------------------ checkpoints
    @property
    def ckpt_root(self) -> Path:
        return self.out / "checkpoints"

    def save_checkpoint(self) -> None:
        final = self.ckpt_root / f"step_{self.step:08d}"
        for stale in self.ckpt_root.glob(".step_*.tmp"):
            shutil.rmtree(stale, ignore_errors=True)
        with atomic_dir(final) as tmp:
            save_tensors(self.gen.state_dict(), tmp / "generator.safetensors")
            save_tensors(self.disc.state_dict(), tmp / "discriminator.safetensors")
            meta = {}
            for name, opt in (("opt_g", self.opt_g), ("opt_d", self.opt_d)):
                tensors, meta[name] = _flatten_optimizer(opt.state_dict())
                save_tensors(tensors, tmp / f"{name}.safetensors")
            state = {"step": self.step, **meta}
            atomic_write_text(tmp / "state.json", json.dumps(state))
        point_latest(self.ckpt_root, final, self.recipe.train.keep_checkpoints)

    def warm_start(self, run: Path) -> int:
        """Fine-tune from another run: its latest generator and discriminator weights (not
        its optimizers or step), except the prior's frozen codebooks, which stay this
        recipe's content model's (the decoder, flow and posterior carry over to new codes).
        Returns the step the weights come from."""
        path, state = init_checkpoint(run, "train voice")
        keep = lambda state: {k: v for k, v in state.items()  # noqa: E731
                              if not k.startswith("prior.codebooks.")}  # fmt: skip
        gen = keep(load_tensors(path / "generator.safetensors"))
        check_state(keep(self.gen.state_dict()), gen, str(path))
        self.gen.load_state_dict(gen, strict=False)
        disc = load_tensors(path / "discriminator.safetensors")
        check_state(self.disc.state_dict(), disc, str(path))
        self.disc.load_state_dict(disc)
        return int(state["step"])

    def load_checkpoint(self) -> bool:
        found = latest_checkpoint(self.ckpt_root)
        if found is None:
            return False
        path, state = found
        self.gen.load_state_dict(load_tensors(path / "generator.safetensors"))
        self.disc.load_state_dict(load_tensors(path / "discriminator.safetensors"))
        for name, opt in (("opt_g", self.opt_g), ("opt_d", self.opt_d)):
            tensors = load_tensors(path / f"{name}.safetensors")
            sd = _unflatten_optimizer(tensors, {"optimizer": state[name]})
            sd["state"] = {int(k): v for k, v in sd["state"].items()}  # parameter indices
            opt.load_state_dict(sd)
        self.step = int(state["step"])
        return True

    # ------------------------------------------------------------------ loop
    def mel(self, wav: torch.Tensor) -> torch.Tensor:
        return mel_spectrogram(wav, self.spec, self.mel_fb)

    def batch(self, step: int) -> tuple[dict, torch.Generator]:
        g = step_generator(self.recipe.train.seed, step)
        ids = torch.randint(len(self.train.data), (self.recipe.data.batch_size,), generator=g)
        batch = make_batch(self.train, self.recipe, ids.tolist(), g, self.bos,
                           self.recipe.data.no_text)  # fmt: skip
        batch = to_device(batch, self.device)
        batch["spec"] = linear_spectrogram(batch["wav"], self.spec)
        return batch, g

    def train_step(self, step: int) -> dict[str, float]:
        c, w = self.recipe.model, self.recipe.loss
        batch, g = self.batch(step)
        out = self.gen(batch, g)
        seg = c.segment_frames * c.hop
        real = slice_segments(batch["wav"][:, None], out["starts"] * c.hop, seg)
        fake = out["wav"]
        r, f, _, _ = self.disc(real, fake.detach())
        loss_d = discriminator_loss(r, f)
        self.opt_d.zero_grad(set_to_none=True)
        loss_d.backward()
        grad_d = torch.nn.utils.clip_grad_norm_(self.disc.parameters(), 1e3)
        self.opt_d.step()
        r, f, fr, ff = self.disc(real, fake)
        mel_l1 = F.l1_loss(self.mel(fake[:, 0]), self.mel(real[:, 0]))
        kl = kl_loss(out["z_p"], out["logs_q"], out["m_p"], out["logs_p"], out["mask"])
        adv, fm = generator_loss(f), feature_loss(fr, ff)
        loss_g = w.adversarial * adv + w.feature * fm + w.mel * mel_l1 + w.kl * kl
        self.opt_g.zero_grad(set_to_none=True)
        loss_g.backward()
        grad_g = torch.nn.utils.clip_grad_norm_(
            [p for p in self.gen.parameters() if p.requires_grad], 1e3
        )
        self.opt_g.step()
        values = {"loss": loss_g, "loss_d": loss_d, "mel_l1": mel_l1, "kl": kl, "adv": adv,
                  "fm": fm, "grad_g": grad_g, "grad_d": grad_d}  # fmt: skip
        return {k: float(v.detach()) for k, v in values.items()}

    @torch.no_grad()
    def validate(self) -> dict[str, float]:
        """Resynthesis of held-out sentences (their codes + phonemes, another utterance of
        the voice as reference): mel L1 against the real audio; wavs into OUT/samples."""
        self.gen.eval()
        n = min(self.recipe.val_utterances, len(self.val.data))
        folder = self.out / "samples" / f"step_{self.step:08d}"
        losses = []
        for i in range(n):
            batch = make_batch(self.val, self.recipe, [i], torch.Generator().manual_seed(i),
                               self.bos, 0.0)  # fmt: skip
            batch = to_device(batch, self.device)
            wav = self.gen.infer(batch["codes"], batch["phonemes"], batch["ref_mel"],
                                 generator=torch.Generator().manual_seed(i))  # fmt: skip
            real = batch["wav"][0, : len(wav)]
            losses.append(float(F.l1_loss(self.mel(wav[None]), self.mel(real[None]))))
            save_audio(folder / f"{i:02d}.wav", wav.cpu(), self.spec.sample_rate)
        self.gen.train()
        return {"val_mel_l1": sum(losses) / len(losses)}

    def log(self, record: dict, board: Board | None) -> None:
        with open(self.out / "log.jsonl", "a") as f:
            f.write(json.dumps(record) + "\n")
        if board is not None:
            board.record(record)

    def fit(self, stop_at: int | None = None) -> None:
        cfg = self.recipe.train
        end = cfg.steps if stop_at is None else min(stop_at, cfg.steps)
        board = Board(self.out) if cfg.tensorboard else None
        bar = tqdm(total=cfg.steps, initial=self.step, desc="train voice", unit="step",
                   dynamic_ncols=True)  # fmt: skip
        window, t0 = [], time.perf_counter()
        try:
            while self.step < end:
                for opt in (self.opt_g, self.opt_d):
                    for group in opt.param_groups:
                        group["lr"] = lr_at(cfg, self.step)
                metrics = self.train_step(self.step)
                if not math.isfinite(metrics["loss"]):
                    raise FloatingPointError(f"loss is {metrics['loss']} at step {self.step}; "
                                             "lower the lr")  # fmt: skip
                self.step += 1
                window.append(metrics)
                bar.update(1)
                done = self.step % cfg.checkpoint_every == 0 or self.step == end
                if self.step % cfg.log_every == 0 or done:
                    record = {k: sum(m[k] for m in window) / len(window) for k in window[0]}
                    record.update(step=self.step, lr=lr_at(cfg, self.step - 1),
                                  s_per_step=(time.perf_counter() - t0) / len(window))  # fmt: skip
                    self.log(record, board)
                    bar.set_postfix(mel=f"{record['mel_l1']:.3f}", d=f"{record['loss_d']:.3f}")
                    window, t0 = [], time.perf_counter()
                if cfg.eval_every and (self.step % cfg.eval_every == 0 or self.step == end):
                    scores = self.validate()
                    self.log({"step": self.step, "eval": scores}, board)
                    bar.write(f"step {self.step}: val mel L1 {scores['val_mel_l1']:.4f}")
                if done:
                    self.save_checkpoint()
        finally:
            bar.close()
            if board is not None:
                board.close()


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
    trainer = VoiceTrainer(recipe, out, train, val, vocab, device)
    with torch.no_grad():  # the frozen codebooks, copied from the content model
        for book, vq in zip(trainer.gen.prior.codebooks, content.codec.quantizers, strict=True):
            book.weight.copy_(vq.codebook)
    if resume and trainer.load_checkpoint():
        print(f"resumed from step {trainer.step}")
    elif init is not None:
        print(f"initialized from {init} (step {trainer.warm_start(Path(init))})")
    trainer.fit(stop_at)
    model_dir = out / "model"
    save_pretrained(content, content.config, model_dir / "content")
    save_pretrained(trainer.gen.eval().cpu(), recipe.model, model_dir / "sovits")
    shutil.copyfile(Path(recipe.data.corpus) / "phonemes.txt", model_dir / "phonemes.txt")
    print(f"saved {model_dir}")
    return model_dir
