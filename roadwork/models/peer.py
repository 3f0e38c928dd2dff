"""A DINOv3 image classifier: the public StreetVision miners' recipe (a whole backbone fine-tuned end to
end at 224 px) on the pipeline's own backbone class, for the side-by-side benchmark (`experiments/peers.py`).

transformers ships DINOv3 as a backbone only (no `...ForImageClassification`), so this module defines
one, in the style of its DINOv2 classifier: a linear layer on the CLS token concatenated with the mean
of the patch tokens. It imports nothing from `roadwork`: `save_pretrained` copies this file beside the
weights (`auto_map`), so the saved folder loads anywhere with
`pipeline("image-classification", model=folder, trust_remote_code=True)`, as the subnet's base miner
loads a model. Takes tensors, never paths.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import DINOv3ViTConfig, DINOv3ViTModel
from transformers.modeling_outputs import ImageClassifierOutput
from transformers.models.dinov3_vit.modeling_dinov3_vit import DINOv3ViTPreTrainedModel

LABELS = {0: "None", 1: "Roadwork"}  # the base miner returns the score of the label "Roadwork"


class DINOv3ViTForImageClassification(DINOv3ViTPreTrainedModel):
    """DINOv3 ViT + linear head on [CLS, mean patch token] -> logits `[B, num_labels]`."""

    base_model_prefix = "dinov3"

    def __init__(self, config: DINOv3ViTConfig):
        super().__init__(config)
        self.dinov3 = DINOv3ViTModel(config)
        self.classifier = nn.Linear(2 * config.hidden_size, config.num_labels)
        self.post_init()

    def forward(
        self, pixel_values: torch.Tensor, labels: torch.Tensor | None = None, **kwargs: object
    ) -> ImageClassifierOutput:
        hidden = self.dinov3(pixel_values).last_hidden_state
        patches = hidden[:, 1 + self.config.num_register_tokens :]
        logits = self.classifier(torch.cat([hidden[:, 0], patches.mean(dim=1)], dim=-1))
        loss = None if labels is None else nn.functional.cross_entropy(logits, labels)
        return ImageClassifierOutput(loss=loss, logits=logits)


def classifier_from_backbone(backbone: DINOv3ViTModel) -> DINOv3ViTForImageClassification:
    """A classifier whose backbone is a copy of `backbone` (its weights, its config) and whose labels
    are `LABELS`; the linear head is freshly initialised."""
    config = DINOv3ViTConfig.from_dict(backbone.config.to_dict())
    config.id2label, config.label2id = dict(LABELS), {v: k for k, v in LABELS.items()}
    model = DINOv3ViTForImageClassification(config)
    model.dinov3.load_state_dict(backbone.state_dict())
    return model
