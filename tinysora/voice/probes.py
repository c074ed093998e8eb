"""What the semantic codes carry: content, not speaker (issue 18, Deliver 2).

* **Phones**: a linear probe (a table from code to phone logits, i.e. a linear layer on
  one-hot codes, each 25 Hz code repeated to 50 Hz) trained with CTC on train-split
  codes against their phone sequences (espeak's IPA without stress, length marks,
  spaces or punctuation), scored by greedy decoding on held-out sentences:
  phone accuracy = 1 - phone error rate (edit distance / reference length).
* **Speaker**: a linear softmax probe on each utterance's code histogram, trained on the
  train split and scored on held-out sentences of the same voices, against chance
  (1 / voices) and against the same probe on the utterance's mean log-mel (what the
  input carries about the speaker).
* **Codebook**: perplexity (the number of equally used codes the histogram equals) and
  the fraction of codes used, on held-out sentences.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from tinysora.voice.content import ContentModel, perplexity
from tinysora.voice.data import Utterances
from tinysora.voice.text import PhonemeVocab

NOT_PHONES = set("ˈˌː ,.!?;:-'\"()") | {"<pad>", "<bos>", "<eos>", "\u0329", "\u0303"}


def phone_table(vocab: PhonemeVocab) -> dict[int, int]:
    """Vocabulary id -> phone class (1..P; 0 is CTC's blank) for the symbols that are phones."""
    phones = [i for i, s in enumerate(vocab.symbols) if s not in NOT_PHONES]
    return {i: k + 1 for k, i in enumerate(phones)}


@torch.no_grad()
def utterance_codes(model: ContentModel, data: Utterances, limit: int | None = None):
    """[(n_q, T') codes] of the first ``limit`` utterances."""
    n = len(data) if limit is None else min(limit, len(data))
    return [model.codes(data.utterance_mel(i)[None])[0] for i in range(n)]


def edit_distance(a: list[int], b: list[int]) -> int:
    row = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        prev, row[0] = row[0], i
        for j, y in enumerate(b, 1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (x != y))
    return row[-1]


def _phones(data: Utterances, i: int, table: dict[int, int]) -> torch.Tensor:
    return torch.tensor([table[p] for p in data.utterance_phonemes(i).tolist() if p in table])


def phone_probe(
    train_codes,
    train: Utterances,
    test_codes,
    test: Utterances,
    vocab: PhonemeVocab,
    codebook_size: int,
    steps: int = 400,
    seed: int = 0,
) -> dict:
    table = phone_table(vocab)
    n_classes = len(table) + 1
    probe = torch.nn.Embedding(codebook_size, n_classes)  # a linear map of one-hot codes
    torch.nn.init.zeros_(probe.weight)
    opt = torch.optim.Adam(probe.parameters(), lr=0.05)
    g = torch.Generator().manual_seed(seed)
    targets = [_phones(train, i, table) for i in range(len(train_codes))]
    for _ in range(steps):
        ids = torch.randint(len(train_codes), (32,), generator=g).tolist()
        logits = [probe(train_codes[i][0].repeat_interleave(2)) for i in ids]  # (T, C)
        lengths = torch.tensor([len(x) for x in logits])
        padded = torch.nn.utils.rnn.pad_sequence(logits)  # (T, B, C)
        tgt = [targets[i] for i in ids]
        loss = F.ctc_loss(
            padded.log_softmax(-1),
            torch.cat(tgt),
            lengths,
            torch.tensor([len(t) for t in tgt]),
            zero_infinity=True,
        )
        opt.zero_grad()
        loss.backward()
        opt.step()
    errors = total = 0
    with torch.no_grad():
        for i, codes in enumerate(test_codes):
            best = probe(codes[0].repeat_interleave(2)).argmax(-1).tolist()
            decoded = [p for k, p in enumerate(best) if p != 0 and (k == 0 or p != best[k - 1])]
            ref = _phones(test, i, table).tolist()
            errors += edit_distance(decoded, ref)
            total += len(ref)
    return {
        "phone_error_rate": errors / total,
        "phone_accuracy": 1 - errors / total,
        "phones": n_classes - 1,
        "ctc_loss_last": float(loss.detach()),
    }


def _linear_probe(x_train, y_train, x_test, y_test, classes: int, steps: int = 500) -> float:
    mean, std = x_train.mean(0), x_train.std(0) + 1e-5
    x_train, x_test = (x_train - mean) / std, (x_test - mean) / std
    w = torch.nn.Linear(x_train.shape[1], classes)
    opt = torch.optim.Adam(w.parameters(), lr=0.01, weight_decay=1e-4)
    for _ in range(steps):
        loss = F.cross_entropy(w(x_train), y_train)
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        return float((w(x_test).argmax(-1) == y_test).float().mean())


def speaker_probe(train_codes, train: Utterances, test_codes, test: Utterances, size: int):
    """Speaker accuracy from code histograms vs from mean log-mels (held-out sentences)."""

    def hist(codes_list):
        h = torch.stack([torch.bincount(c[0], minlength=size).float() for c in codes_list])
        return h / h.sum(1, keepdim=True)

    def mel_mean(data: Utterances, n: int):
        return torch.stack([data.utterance_mel(i).mean(1) for i in range(n)])

    n_train, n_test = len(train_codes), len(test_codes)
    y_train, y_test = train.speaker[:n_train], test.speaker[:n_test]
    classes = len(train.speakers)
    return {
        "speaker_accuracy_codes": _linear_probe(
            hist(train_codes), y_train, hist(test_codes), y_test, classes
        ),
        "speaker_accuracy_mel": _linear_probe(
            mel_mean(train, n_train), y_train, mel_mean(test, n_test), y_test, classes
        ),
        "chance": 1.0 / classes,
        "voices": classes,
    }


def probe_codes(
    model: ContentModel,
    train: Utterances,
    test: Utterances,
    vocab: PhonemeVocab,
    train_limit: int = 1500,
    steps: int = 400,
) -> dict:
    """All three measurements; ``test`` = held-out sentences of the train voices."""
    train_codes = utterance_codes(model, train, train_limit)
    test_codes = utterance_codes(model, test)
    size = model.config.codec.codebook_size
    all_test = torch.cat([c[0] for c in test_codes])
    return {
        **phone_probe(train_codes, train, test_codes, test, vocab, size, steps),
        **speaker_probe(train_codes, train, test_codes, test, size),
        "perplexity": perplexity(all_test, size),
        "codes_used": int(torch.unique(all_test).numel()) / size,
        "codebook_size": size,
        "test_utterances": len(test_codes),
    }
