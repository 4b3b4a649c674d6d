"""A character-level tokenizer for printable ASCII, saved locally so nothing is downloaded.

Vocabulary, 101 ids: ``<pad>`` 0, ``<eos>`` 1, ``<bos>`` 2, ``<unk>`` 3 (any other character),
then one token per character: tab 4, newline 5, and space through ``~`` (ASCII 32..126) at
ids 6..100. Nothing is normalised and no special token is added when encoding, so
``decode(encode(s)) == s`` for any printable ASCII ``s``. Chat messages render as
``role: content`` lines; the generation prompt is ``assistant: ``.

``python -m sapo_lightning.text.tokenizer DIR`` saves it to DIR (the repository ships it in
``assets/tokenizers/ascii``); load it with ``AutoTokenizer.from_pretrained(DIR)``.
"""

from __future__ import annotations

import argparse

from tokenizers import Tokenizer, decoders, models
from transformers import PreTrainedTokenizerFast

SPECIAL_TOKENS = ("<pad>", "<eos>", "<bos>", "<unk>")  # ids 0, 1, 2, 3
CHARACTERS = ("\t", "\n", *map(chr, range(32, 127)))  # tab, newline, space .. "~"
CHAT_TEMPLATE = (
    "{% for message in messages %}{{ message['role'] + ': ' + message['content'] + '\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ 'assistant: ' }}{% endif %}"
)


def build_ascii_tokenizer() -> PreTrainedTokenizerFast:
    """The ASCII character tokenizer, padding on the left as prompts are."""
    vocab = {token: i for i, token in enumerate(SPECIAL_TOKENS + CHARACTERS)}
    # BPE without merges and without a pre-tokenizer: exactly one token per character
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    backend.decoder = decoders.Fuse()  # join tokens as they are, no spaces between them
    backend.add_special_tokens(list(SPECIAL_TOKENS))
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token="<pad>",
        eos_token="<eos>",
        bos_token="<bos>",
        unk_token="<unk>",
        padding_side="left",
        chat_template=CHAT_TEMPLATE,
        clean_up_tokenization_spaces=False,  # the cleanup would turn " ." into "." and break round trips
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Save the ASCII character tokenizer with save_pretrained.")
    parser.add_argument("directory", help="where to write tokenizer.json, tokenizer_config.json, chat_template.jinja")
    build_ascii_tokenizer().save_pretrained(parser.parse_args(argv).directory)


if __name__ == "__main__":
    main()
