"""Built-in ``text_classifier``: TorchServe's TextClassifier without torchtext.

The text is cleaned (HTML tags and entities removed, lowercased, contractions expanded,
accents and punctuation removed), split basic_english style, extended with bigrams, and looked
up in ``source_vocab.pt``; the model is called EmbeddingBag style as ``model(ids, offsets)``.
The answer is ``{label: probability}`` over all classes.

TorchServe runs only ``data[0]`` and returns one answer per batch; here every request runs
through the model by itself (the same computation), so each gets its own answer.
"""

from __future__ import annotations

import re
import string
import unicodedata
from pathlib import Path
from typing import Any

import torch

from modelserve import model_clock
from modelserve.handlers.base_handler import BaseHandler
from modelserve.handlers.errors import BadInputError, missing_payload
from modelserve.handlers.runtimes import is_onnx
from modelserve.handlers.vision import handle_per_request, label_for, row_value

_MARKUP = re.compile(r"<[^>]*>|&(?:[a-z0-9]+|#[0-9]{1,6}|#x[0-9a-f]{1,6});")
_APOSTROPHE_WORD = re.compile(r"[\w']*'[\w']*")
_PUNCTUATION = str.maketrans("", "", string.punctuation)

# Whole words first; otherwise suffixes peel off right to left ("couldn't've").
_IRREGULAR = {
    "ain't": "is not", "can't": "cannot", "won't": "will not", "shan't": "shall not",
    "sha'n't": "shall not", "ma'am": "madam", "o'clock": "of the clock", "let's": "let us",
    "'cause": "because", "y'all": "you all", "how'd": "how did", "where'd": "where did",
    "how'd'y": "how do you", "so's": "so as",
}
_SUFFIXES = (
    ("n't", " not"), ("'ve", " have"), ("'ll", " will"), ("'re", " are"), ("'m", " am"),
    ("'d", " would"), ("'s", " is"),
)
# "'s" is only "is" after these; elsewhere it is a possessive and just loses its apostrophe.
_IS_SUBJECTS = frozenset("he she it that there what when where who why how".split())


def _expand_word(word: str) -> str:
    if word in _IRREGULAR:
        return _IRREGULAR[word]
    for suffix, expansion in _SUFFIXES:
        head = word[: -len(suffix)]
        if word.endswith(suffix) and head and (suffix != "'s" or head in _IS_SUBJECTS):
            return _expand_word(head) + expansion
    return word


def expand_contractions(text: str) -> str:
    """Lowercase English contractions spelled out ("don't" -> "do not"), then no apostrophes."""
    text = _APOSTROPHE_WORD.sub(lambda m: _expand_word(m.group()), text.replace("\u2019", "'"))
    return text.replace("'", "")


def clean_text(text: str) -> str:
    """TorchServe's TextHandler cleanup, in its order."""
    text = _MARKUP.sub("", text).lower()
    text = expand_contractions(text)
    text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("ascii")
    return text.translate(_PUNCTUATION)


def basic_english(text: str) -> list[str]:
    """torchtext's ``basic_english`` tokenizer: lowercase, punctuation split off, whitespace."""
    text = text.lower().replace("<br />", " ").replace('"', "")
    text = re.sub(r"([.,()!?'])", r" \1 ", text)
    return re.sub(r"[;:]", " ", text).split()


def with_ngrams(tokens: list[str], n: int) -> list[str]:
    """The tokens, then every 2..n-gram joined by spaces (torchtext's ``ngrams_iterator``)."""
    out = list(tokens)
    for size in range(2, n + 1):
        out += [" ".join(tokens[i : i + size]) for i in range(len(tokens) - size + 1)]
    return out


def load_vocab(path: Path) -> tuple[dict[str, int], int]:
    """Token -> index from a ``torch.save``d dict or list, and the index for unknown tokens."""
    try:
        vocab = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ValueError(
            f"cannot load {path.name} ({exc}); save the vocabulary with torch.save as a "
            "dict[str, int] (token -> index) or a list[str] (index -> token)"
        ) from exc
    if isinstance(vocab, dict):
        stoi = {str(token): int(index) for token, index in vocab.items()}
    elif isinstance(vocab, (list, tuple)):
        stoi = {}
        for index, token in enumerate(vocab):
            stoi.setdefault(str(token), index)
    else:
        raise ValueError(
            f"{path.name} holds a {type(vocab).__name__}; expected a dict[str, int] or list[str]"
        )
    return stoi, stoi.get("<unk>", 0)


def _as_text(value: Any) -> str:
    if isinstance(value, (bytes, bytearray)):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise BadInputError(f"text must be UTF-8: {exc}") from None
    if isinstance(value, str):
        return value
    if value is None:
        raise missing_payload("UTF-8 text", "text")
    raise BadInputError(f"expected UTF-8 text, got {type(value).__name__}")


class TextClassifier(BaseHandler):
    """Class probabilities for one text per request."""
    thread_safe = True  # batch lanes may run copies at once (worker.lanes)

    ngrams = 2

    def __init__(self) -> None:
        super().__init__()
        self.source_vocab: dict[str, int] = {}
        self.unk_index = 0

    def initialize(self, context: Any) -> None:
        super().initialize(context)
        if is_onnx(self.model):
            raise ValueError("text_classifier serves TorchScript models taking (text, offsets)")
        name = self.manifest.get("model", {}).get("sourceVocab") or "source_vocab.pt"
        path = Path(context.system_properties["model_dir"]) / name
        if not path.is_file():
            raise FileNotFoundError(
                f"text_classifier needs the vocabulary file {name} in the model archive"
            )
        self.source_vocab, self.unk_index = load_vocab(path)

    def preprocess(self, data: list[dict[str, Any]]) -> tuple[torch.Tensor, list[str]]:
        """The first request's token ids (with n-grams) and its tokens, as TorchServe does."""
        tokens = basic_english(clean_text(_as_text(row_value(data[0]))))
        ids = [self.source_vocab.get(t, self.unk_index) for t in with_ngrams(tokens, self.ngrams)]
        return torch.tensor(ids, dtype=torch.long, device=self.device), tokens

    def inference(self, data: Any, *args: Any, **kwargs: Any) -> torch.Tensor:
        text, _ = data
        offsets = torch.zeros(1, dtype=torch.long, device=self.device)
        with torch.inference_mode(), model_clock.timing():
            return self.model(text, offsets)

    def postprocess(self, data: torch.Tensor) -> list[dict[str, float]]:
        probs = torch.softmax(data.float().reshape(-1, data.shape[-1]), dim=1)
        return [
            {label_for(self.mapping, i): p for i, p in enumerate(row)} for row in probs.tolist()
        ]

    def handle(self, data: list[dict[str, Any]], context: Any) -> list[Any]:
        return handle_per_request(self, data, context, batch=False)
