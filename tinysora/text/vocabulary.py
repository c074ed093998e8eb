"""The words a model was trained on, and a check of a prompt against them.

A model's ``pipeline.json`` keeps its vocabulary (``PipelineConfig.vocabulary``): named
groups of the words and phrases of the captions it trained on, written when the model
is exported (the Shapes World's from its caption grammar, ``worlds.captions``; your
own videos' from their captions, ``data.cache``). The text encoder turns any word into
something, so a word the DiT never saw gives a plain clip with no complaint; the
pipeline warns instead (:func:`unknown_words_warning`), naming the words, a close
known word for near misses ("cirlce -> circle?") and what the model knows. Stop-words
are never flagged; a model saved without a vocabulary is not checked.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable

Vocabulary = dict[str, list[str]]  # group name -> words and phrases, in the order shown

WORD = re.compile(r"[a-z]+")
CAPTION_GROUP = "words"  # the group of a vocabulary taken from free captions
SUGGEST_CUTOFF = 0.75  # difflib similarity for "did you mean" (smal -> small: 0.89)
SHOWN_PER_GROUP = 8  # a warning names this many of a group's words, then "..."
ADAPTER_VOCABULARY = "vocabulary.json"  # beside a LoRA adapter: what its training knew


def words(text: str) -> list[str]:
    """The lower-case words of ``text`` (letters only: digits and punctuation split)."""
    return WORD.findall(text.lower())


STOP_WORDS = frozenset(
    words(
        "a an the this that these those some any one on in at of to into onto over under "
        "above below across along around through from by with without near next beside "
        "behind and or but then while as is are was be being its it there here very"
    )
)


def from_captions(captions: Iterable[str]) -> Vocabulary:
    """The vocabulary of free captions: their words (no stop-words), most frequent
    first, in one group."""
    counts: dict[str, int] = {}
    for caption in captions:
        for word in words(caption):
            if word not in STOP_WORDS:
                counts[word] = counts.get(word, 0) + 1
    return {CAPTION_GROUP: sorted(counts, key=lambda w: (-counts[w], w))} if counts else {}


def merge(*vocabularies: Vocabulary) -> Vocabulary:
    """One vocabulary with every group of each (entries in first-seen order)."""
    merged: Vocabulary = {}
    for vocabulary in vocabularies:
        for group, entries in vocabulary.items():
            known = merged.setdefault(group, [])
            known += [e for e in entries if e not in known]
    return merged


def known_words(vocabulary: Vocabulary) -> set[str]:
    return {w for entries in vocabulary.values() for e in entries for w in words(e)}


def unknown_words(prompts: Iterable[str], vocabulary: Vocabulary) -> list[str]:
    """The words of ``prompts`` outside ``vocabulary`` (not stop-words), each once, in
    prompt order; none when the vocabulary is empty (a model saved without one)."""
    known = known_words(vocabulary)
    if not known:
        return []
    found: list[str] = []
    for prompt in prompts:
        found += [w for w in words(prompt) if w not in known | STOP_WORDS and w not in found]
    return found


def unknown_words_warning(prompts: Iterable[str], vocabulary: Vocabulary) -> str | None:
    """One line naming the prompt words the model does not know, with a suggestion for
    near misses and the groups of what it knows; None when every word is known."""
    unknown = unknown_words(prompts, vocabulary)
    if not unknown:
        return None
    known = sorted(known_words(vocabulary))
    named = []
    for word in unknown:
        close = difflib.get_close_matches(word, known, n=1, cutoff=SUGGEST_CUTOFF)
        named.append(f"{word} -> {close[0]}?" if close else word)

    def shown(entries: list[str]) -> str:
        more = ", ..." if len(entries) > SHOWN_PER_GROUP else ""
        return ", ".join(entries[:SHOWN_PER_GROUP]) + more

    knows = "; ".join(f"{group}: {shown(entries)}" for group, entries in vocabulary.items())
    return (
        f"words the model was not trained on change little or nothing: {', '.join(named)} "
        f"(it knows {knows})"
    )
