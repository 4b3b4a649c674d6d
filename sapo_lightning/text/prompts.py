"""A batch of tokenized prompts: left-padded ids, their text and the dataset's other columns."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(eq=False)
class Prompts:
    """A batch of tokenized prompts, left-padded.

    Left padding puts every prompt's last token in the last column, so generation continues
    all prompts from the same position.
    """

    input_ids: Tensor  # [B, P] long, left-padded with the tokenizer's pad id
    attention_mask: Tensor  # [B, P] long, 1 for real tokens, 0 for padding
    texts: list[str]  # each prompt as text, after the chat template (what the policy reads)
    columns: dict[str, list]  # the dataset's other columns, by name, one value per prompt

    def __len__(self) -> int:
        return len(self.texts)

    def repeat_interleave(self, repeats: int, dim: int = 0) -> Prompts:
        """Each prompt ``repeats`` times in place (a, a, b, b for 2), as ``Tensor.repeat_interleave`` on dim 0."""
        if dim != 0:
            raise ValueError(f"Prompts repeat along the batch dimension 0; got dim={dim}")

        def repeat(values: list) -> list:
            return [value for value in values for _ in range(repeats)]

        return Prompts(
            self.input_ids.repeat_interleave(repeats, 0),
            self.attention_mask.repeat_interleave(repeats, 0),
            repeat(self.texts),
            {name: repeat(values) for name, values in self.columns.items()},
        )

    def to(self, device: torch.device | str) -> Prompts:
        """The same prompts with their tensors on ``device`` (Lightning moves batches this way)."""
        return Prompts(self.input_ids.to(device), self.attention_mask.to(device), self.texts, self.columns)

    @classmethod
    def cat(cls, parts: list[Prompts]) -> Prompts:
        """The batches one after another, left-padded to the widest; the added columns are masked out
        (attention 0, id 0), so no position or attention of a prompt changes."""
        width = max(part.input_ids.shape[1] for part in parts)

        def padded(t: Tensor) -> Tensor:  # [b, P_part] -> [b, width]
            return torch.nn.functional.pad(t, (width - t.shape[1], 0), value=0)

        columns = {name: [v for part in parts for v in part.columns[name]] for name in parts[0].columns}
        return cls(torch.cat([padded(p.input_ids) for p in parts]), torch.cat([padded(p.attention_mask) for p in parts]),
                   [text for part in parts for text in part.texts], columns)

    def __getitem__(self, index: slice) -> Prompts:
        """The prompts of a slice of the batch."""
        if not isinstance(index, slice):
            raise TypeError(f"Prompts are indexed by a slice; got {type(index).__name__}")
        columns = {name: values[index] for name, values in self.columns.items()}
        return Prompts(self.input_ids[index], self.attention_mask[index], self.texts[index], columns)


def pad_left(sequences: list[list[int]], pad_id: int) -> tuple[Tensor, Tensor]:
    """Token id lists as ids ``[B, P]`` (P the longest, ``pad_id`` before shorter ones) and mask ``[B, P]``."""
    width = max(map(len, sequences), default=0)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, sequence in enumerate(sequences):
        if sequence:  # an empty slice [-0:] would be the whole row
            ids[row, -len(sequence) :] = torch.tensor(sequence, dtype=torch.long)
            mask[row, -len(sequence) :] = 1
    return ids, mask
