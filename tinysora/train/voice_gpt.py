"""`tinysora train voice-gpt`: the GPT stage (``tinysora.voice.gpt``) on the corpus's
phonemes and a voice model's content codes.

Each example is laid out as inference will see it: a target utterance whose prompt is one
or two other utterances of the same speaker (their codes first, their phonemes before the
target's). A share of examples drop the prompt's phonemes (a reference without its
transcript: the prompt's codes then carry no loss, nothing predicts them) and a share
have no prompt at all. The loss is cross-entropy of the next code (and the final <eos>).

Output directory::

    OUT/features/           log-mels and codes of the corpus splits
    OUT/checkpoints/        the shared Trainer's atomic, resumable checkpoints
    OUT/log.jsonl           loss, accuracy, lr, s/step, MFU; held-out loss and accuracy
    OUT/model/              the voice model's content/ + sovits/ + phonemes.txt, plus gpt/:
                            a whole text-to-speech model (SpeechPipeline.from_pretrained)
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from tinysora.config import Config
from tinysora.device import resolve_device
from tinysora.errors import UserError
from tinysora.io.checkpoint import CheckpointError, load_pretrained, load_tensors, save_pretrained
from tinysora.train.trainer import (
    TrainConfig,
    Trainer,
    check_run_dir,
    init_checkpoint,
    latest_checkpoint,
    step_generator,
)
from tinysora.train.voice_align import align_splits, longest_rest
from tinysora.voice.content import ContentModel
from tinysora.voice.data import Split, load_split
from tinysora.voice.gpt import GPTConfig, Text2Semantic, guided_attention_loss
from tinysora.voice.sovits import SynthesizerTrn, spectrogram_config
from tinysora.voice.speech import CONFIG_NAME as SPEECH_CONFIG
from tinysora.voice.speech import DEFAULT_VOICE, SpeechConfig
from tinysora.voice.text import PhonemeVocab


@dataclass
class GPTDataConfig(Config):
    corpus: str = "runs/voice/corpus"
    voice: str = "weights/voice"  # a voice model directory: content/ + sovits/ + phonemes.txt
    batch_size: int = 16
    max_codes: int = 400  # prompt + target codes of one example (16 s at 25 Hz)
    no_prompt: float = 0.1  # share of examples without a prompt
    prompt_without_text: float = 0.3  # share of prompts without their phonemes
    two_utterance_prompt: float = 0.4  # share of prompts made of two utterances
    # share of input codes replaced by random codes (targets untouched): the next code
    # cannot be guessed from the codes before it alone, so the phonemes must be read
    input_noise: float = 0.0
    # the forced aligner behind a pointer model (model.max_advance > 0; train/voice_align.py)
    align_iterations: int = 3
    align_steps: int = 600  # classifier steps per iteration


@dataclass
class GPTLossConfig(Config):
    # DC-TTS's guided attention on head 0 of the first ``guided_layers`` layers: the code
    # queries' attention over the phonemes is pushed toward the diagonal (0 = off)
    guided_attention: float = 0.0
    guided_layers: int = 2
    guided_sigma: float = 0.2


@dataclass
class VoiceGPTRecipe(Config):
    data: GPTDataConfig = field(default_factory=GPTDataConfig)
    model: GPTConfig = field(default_factory=GPTConfig)
    loss: GPTLossConfig = field(default_factory=GPTLossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    val_batches: int = 4


def example(
    split: Split,
    i: int,
    g: torch.Generator,
    d: GPTDataConfig,
    space: int,
    pointers: torch.Tensor | None = None,
):
    """(phonemes, codes, free, target pointers) of target utterance ``i``: free = how
    many leading (prompt) codes carry no loss; target pointers (a pointer model, else
    None): the phoneme each target code voices, indices into ``phonemes``."""
    chance = lambda p: float(torch.rand(1, generator=g)) < p  # noqa: E731
    target_codes = split.utterance_codes(i)[0]
    peers = [j for j in split.by_speaker[int(split.data.speaker[i])] if j != i]
    prompt = []
    if peers and not chance(d.no_prompt):
        n = 2 if chance(d.two_utterance_prompt) else 1
        picks = torch.randperm(len(peers), generator=g)[:n].tolist()
        prompt = [peers[k] for k in picks]
    prompt_codes = [split.utterance_codes(j)[0] for j in prompt]
    while prompt and sum(map(len, prompt_codes)) + len(target_codes) > d.max_codes:
        prompt, prompt_codes = prompt[1:], prompt_codes[1:]
    target_codes = target_codes[: d.max_codes]
    with_text = not prompt or not chance(d.prompt_without_text)
    phones = [split.data.utterance_phonemes(j) for j in (prompt if with_text else [])]
    phones = [t for p in phones for t in (p, torch.tensor([space]))]
    phonemes = torch.cat([*phones, split.data.utterance_phonemes(i)])
    codes = torch.cat([*prompt_codes, target_codes])
    free = 0 if with_text else len(codes) - len(target_codes)  # prompt codes given, no loss
    pointed = None
    if pointers is not None:
        first = int(split.code_offsets[i])
        target_phones = len(split.data.utterance_phonemes(i))
        pointed = pointers[first : first + len(target_codes)] + len(phonemes) - target_phones
    return phonemes, codes, free, pointed


def collate(items: list, bos: int, eos: int, max_advance: int = 0) -> dict:
    b = len(items)
    p_max = max(len(x[0]) for x in items)
    t_max = max(len(x[1]) for x in items) + 1
    batch = {
        "phonemes": torch.zeros(b, p_max, dtype=torch.long),
        "phone_lengths": torch.tensor([len(x[0]) for x in items]),
        "inputs": torch.zeros(b, t_max, dtype=torch.long),
        "targets": torch.full((b, t_max), -100, dtype=torch.long),  # -100: no loss
        "code_lengths": torch.tensor([len(x[1]) + 1 for x in items]),
        "free": torch.tensor([x[2] for x in items]),  # prompt codes without phonemes
    }
    if max_advance:  # the phoneme each position's target voices; the pointer's move after
        batch["pointers"] = torch.full((b, t_max), -1, dtype=torch.long)
        batch["advance"] = torch.full((b, t_max), -100, dtype=torch.long)
    for k, (phonemes, codes, free, pointed) in enumerate(items):
        n = len(codes)
        batch["phonemes"][k, : len(phonemes)] = phonemes
        batch["inputs"][k, 0], batch["inputs"][k, 1 : n + 1] = bos, codes
        batch["targets"][k, :n], batch["targets"][k, n] = codes, eos
        batch["targets"][k, :free] = -100
        if max_advance:  # the target codes are the last len(pointed) of the codes
            first = n - len(pointed)
            batch["pointers"][k, first:n], batch["pointers"][k, n] = pointed, pointed[-1]
            moves = torch.diff(pointed, append=torch.tensor([len(phonemes)]))
            batch["advance"][k, first:n] = moves.clamp(0, max_advance)
    return batch


def make_batch(
    split: Split,
    recipe: VoiceGPTRecipe,
    g: torch.Generator,
    space: int,
    noise: float = 0.0,
    pointers: torch.Tensor | None = None,
) -> dict:
    ids = torch.randint(len(split.data), (recipe.data.batch_size,), generator=g).tolist()
    c = recipe.model
    batch = collate(
        [example(split, i, g, recipe.data, space, pointers) for i in ids],
        c.bos,
        c.eos,
        c.max_advance,
    )
    if noise > 0:  # corrupt input codes (never <bos> or padding), keep the targets
        inputs = batch["inputs"]
        codes = torch.arange(inputs.shape[1])[None] < batch["code_lengths"][:, None]
        hit = (torch.rand(inputs.shape, generator=g) < noise) & codes
        hit[:, 0] = False
        random = torch.randint(c.codebook_size, inputs.shape, generator=g)
        batch["inputs"] = torch.where(hit, random, inputs)
    return batch


def shuffled_phonemes(batch: dict) -> dict:
    """The batch with each example's phonemes taken from the next example: the val loss
    on it, less the true one, is what the phonemes are worth (nats per code)."""
    roll = lambda t: torch.roll(t, 1, 0)  # noqa: E731  (pointers past the end: clamped)
    return {
        **batch,
        "phonemes": roll(batch["phonemes"]),
        "phone_lengths": roll(batch["phone_lengths"]),
    }


def gpt_loss(model, batch, w: GPTLossConfig | None = None) -> tuple[torch.Tensor, dict]:
    """Next-code cross-entropy (+ the pointer's advance cross-entropy, + ``w.guided_attention``
    x the guided-attention cost)."""
    guided = w is not None and w.guided_attention > 0
    out = model(
        batch["phonemes"],
        batch["phone_lengths"],
        batch["inputs"],
        batch["code_lengths"],
        w.guided_layers if guided else 0,
        batch.get("pointers"),
    )
    logits, maps = out if guided else (out, None)
    v = model.config.codebook_size + 1
    logits, advance = logits[..., :v], logits[..., v:]
    targets = batch["targets"]
    loss = F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), ignore_index=-100)
    scored = targets != -100
    metrics = {"acc": (logits.argmax(-1) == targets)[scored].float().mean().detach()}
    if "advance" in batch:
        moves = batch["advance"]
        move_loss = F.cross_entropy(
            advance.float().flatten(0, 1), moves.flatten(), ignore_index=-100
        )
        metrics["code_ce"], metrics["advance_ce"] = loss.detach(), move_loss.detach()
        loss = loss + move_loss
    if guided:
        cost = guided_attention_loss(
            maps, batch["phone_lengths"], batch["code_lengths"], batch["free"], w.guided_sigma
        )
        metrics["ce"], metrics["guide"] = loss.detach(), cost.detach()
        loss = loss + w.guided_attention * cost
    return loss, metrics


def codes_per_phoneme(split: Split) -> torch.Tensor:
    """(U,) codes / phonemes of each utterance."""
    codes = (split.code_offsets[1:] - split.code_offsets[:-1]).float()
    phones = (split.data.phone_offsets[1:] - split.data.phone_offsets[:-1]).float()
    return codes / phones.clamp(min=1)


def warm_start(model: Text2Semantic, run: Path) -> int:
    """Start from another voice-gpt run's latest EMA weights: every tensor of the same
    name, the head's code rows too when this model adds the pointer's (its pointer input
    and advance rows start fresh). Returns the step they come from."""
    path, state = init_checkpoint(run, "train voice-gpt")
    theirs, own = load_tensors(path / "ema.safetensors"), model.state_dict()
    for key, value in theirs.items():
        if key not in own:
            raise CheckpointError(
                f"--init {run}: '{key}' is not in this model; is it a "
                "voice-gpt run of the same size?"
            )
        target = own[key]
        rows = value.shape[0]
        if key.startswith("head.") and rows <= target.shape[0]:
            target = target[:rows]
        if value.shape != target.shape:
            raise CheckpointError(
                f"--init {run}: '{key}' has shape {tuple(value.shape)}, "
                f"this model {tuple(target.shape)}"
            )
        target.copy_(value)
    return int(state["step"])


def train_voice_gpt(
    config_path: str | Path,
    out: str | Path,
    resume: bool = False,
    device: str | None = None,
    stop_at: int | None = None,
    init: str | Path | None = None,
) -> Path:
    recipe = VoiceGPTRecipe.load(config_path)
    out = Path(out)
    check_run_dir(out, resume)
    voice = Path(recipe.data.voice)
    missing = [n for n in ("content", "sovits", "phonemes.txt") if not (voice / n).exists()]
    if missing:
        raise UserError(
            f"data.voice '{voice}' is not a voice model directory (missing "
            f"{', '.join(missing)}); point it at weights/voice or a `tinysora "
            "train voice` run's model/"
        )
    device = resolve_device(device)
    out.mkdir(parents=True, exist_ok=True)
    if recipe.train.threads:
        torch.set_num_threads(recipe.train.threads)
    content = load_pretrained(ContentModel, voice / "content")
    sovits = load_pretrained(SynthesizerTrn, voice / "sovits")
    vocab = PhonemeVocab(voice / "phonemes.txt")
    spec = spectrogram_config(sovits.config)
    train = load_split(recipe.data.corpus, spec, out, "train", content, keep_wav=False)
    val = load_split(
        recipe.data.corpus, spec, out, "test_seen", content, train.data.speakers, keep_wav=False
    )
    c = recipe.model
    c.n_phonemes, c.codebook_size = len(vocab), content.config.codec.codebook_size
    ratio = codes_per_phoneme(train)
    c.min_codes_per_phoneme = float(torch.quantile(ratio, 0.005))
    c.max_codes_per_phoneme = float(torch.quantile(ratio, 0.995))
    pointers = val_pointers = None
    if c.max_advance:
        features = out / "features"
        d = recipe.data
        found = align_splits(
            {"train": train, "test_seen": val},
            content,
            vocab,
            features,
            d.align_iterations,
            d.align_steps,
            recipe.train.seed,
        )
        pointers, val_pointers = found["train"], found["test_seen"]
        c.max_dwell = longest_rest(pointers, train.code_offsets) + 1
    recipe.save(out / "recipe.json")
    space = vocab.index[" "]
    torch.manual_seed(recipe.train.seed)
    model = Text2Semantic(c)
    if init is not None and not (resume and latest_checkpoint(out / "checkpoints")):
        print(f"initialized from {init} (step {warm_start(model, Path(init))})")
    model = model.to(device)
    n_params = sum(p.numel() for p in model.parameters())
    print(
        f"GPT: {n_params / 1e6:.2f} M parameters; {len(train.data)} train utterances; "
        f"{c.min_codes_per_phoneme:.2f}-{c.max_codes_per_phoneme:.2f} codes per phoneme"
    )

    val_batches = [
        make_batch(
            val, recipe, torch.Generator().manual_seed(10_000 + k), space, pointers=val_pointers
        )
        for k in range(recipe.val_batches)
    ]

    def evaluate(m) -> dict[str, float]:
        on = lambda b: {k: v.to(device) for k, v in b.items()}  # noqa: E731
        code_ce = lambda out: float(out[1].get("code_ce", out[0]))  # noqa: E731
        scores = [gpt_loss(m, on(b)) for b in val_batches]
        wrong = [code_ce(gpt_loss(m, on(shuffled_phonemes(b)))) for b in val_batches]
        loss = sum(code_ce(s) for s in scores) / len(scores)
        mean = lambda key: sum(float(s[1][key]) for s in scores) / len(scores)  # noqa: E731
        result = {
            "val_loss": loss,
            "val_acc": mean("acc"),
            "phoneme_gain": sum(wrong) / len(wrong) - loss,
        }
        if c.max_advance:
            result["val_advance_ce"] = mean("advance_ce")
        return result

    def tokens(batch) -> int:
        return int(batch["phone_lengths"].sum() + batch["code_lengths"].sum())

    trainer = Trainer(
        model,
        recipe.train,
        out,
        lambda m, b: gpt_loss(m, b, recipe.loss),
        lambda step: make_batch(
            train,
            recipe,
            step_generator(recipe.train.seed, step),
            space,
            recipe.data.input_noise,
            pointers,
        ),
        eval_fn=evaluate,
        flops_per_step=lambda b: 6.0 * n_params * tokens(b),
        tokens_per_step=tokens,
    )
    if resume and trainer.load_checkpoint():
        print(f"resumed from step {trainer.step}")
    trainer.fit(stop_at)
    model_dir = out / "model"
    for name in ("content", "sovits"):
        shutil.copytree(voice / name, model_dir / name, dirs_exist_ok=True)
    for name in ("phonemes.txt", *DEFAULT_VOICE):
        if (voice / name).is_file():
            shutil.copyfile(voice / name, model_dir / name)
    model.load_state_dict(trainer.ema_state())
    save_pretrained(model.eval().cpu(), c, model_dir / "gpt")
    SpeechConfig().save(model_dir / SPEECH_CONFIG)  # the pipeline's defaults, beside it
    print(f"saved {model_dir}")
    return model_dir
