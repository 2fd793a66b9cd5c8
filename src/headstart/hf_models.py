"""transformers model classes for the downstream heads that transformers has no class for.

A head export is a Hugging Face directory that the task's auto class loads. Where headstart's head is
the transformers one (token classification, extractive QA, ViT and ResNet image classification), the
export is the stock class (``BertForTokenClassification``, ...). Where it is not, it is one of these:

- sequence classification and regression pool the token states (``mean``, ``cls`` or ``last``) with
  no pooler layer, where ``BertForSequenceClassification`` puts a trained dense + tanh pooler on [CLS]
  (and GPT-2's has no bias); regression learns standardised targets, and its export returns them in
  the data's units (``target_std * output + target_mean``; ``problem_type`` "regression");
- image classification on headstart's CNN (``headstart_cnn``), which transformers does not know;
- any head on a backbone without a transformers class for the task (word2vec's embedding matrix).

The model type ``headstart_head`` (:class:`HeadstartHeadConfig`) holds the backbone's own config
(``backbone``), the pooling, the classifier's input size and, for regression, the target scaling. It
is registered with ``AutoConfig`` and the task auto classes when this module is imported (no remote
code)::

    import headstart.hf_models
    from transformers import AutoModelForSequenceClassification
    model = AutoModelForSequenceClassification.from_pretrained("outputs/<date>/<time>/export")

The backbone sits under its own ``base_model_prefix`` (``bert.``, ``word2vec.``, ``cnn.``), so the
weights have the stock layout and a later hand-off reads them as it reads any export.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForImageClassification,
    AutoModelForQuestionAnswering,
    AutoModelForSequenceClassification,
    AutoModelForTokenClassification,
    PretrainedConfig,
    PreTrainedModel,
)
from transformers.modeling_outputs import (
    QuestionAnsweringModelOutput,
    SequenceClassifierOutput,
    TokenClassifierOutput,
)

from headstart.backbones.pooling import pool
from headstart.backbones.text import register_models
from headstart.backbones.vision import image_features

MODEL_TYPE = "headstart_head"
#: ``pooling`` of a head that classifies an image's feature vector (ViT's CLS, a CNN's pooled map).
IMAGE_POOLING = "image"


class HeadstartHeadConfig(PretrainedConfig):
    """A backbone (its own config as a dict, ``model_type`` included) with a linear head.

    ``pooling``: how a sequence becomes one vector (``mean``, ``cls``, ``last``, or ``image``); None for
    heads on every token. ``backbone_kwargs``: what the backbone is built with beyond its config
    (``add_pooling_layer: false``). ``target_mean``/``target_std``: the regression targets' scaling.
    """

    model_type = MODEL_TYPE

    def __init__(self, backbone: dict[str, Any] | None = None, backbone_kwargs: dict[str, Any] | None = None,
                 pooling: str | None = None, feature_size: int = 0, classifier_dropout: float = 0.0,
                 target_mean: list[float] | None = None, target_std: list[float] | None = None, **kwargs) -> None:
        self.backbone = dict(backbone or {})
        self.backbone_kwargs = dict(backbone_kwargs or {})
        self.pooling = pooling
        self.feature_size = feature_size
        self.classifier_dropout = classifier_dropout
        self.target_mean = list(target_mean) if target_mean is not None else None
        self.target_std = list(target_std) if target_std is not None else None
        super().__init__(**kwargs)

    def backbone_config(self) -> PretrainedConfig:
        register_models()  # headstart's own backbone types (headstart_cnn, headstart_word2vec)
        settings = dict(self.backbone)
        return AutoConfig.for_model(settings.pop("model_type"), **settings)


class HeadstartHeadModel(PreTrainedModel):
    """The backbone under its own prefix, dropout, and one linear layer (``head_name``)."""

    config_class = HeadstartHeadConfig
    base_model_prefix = ""  # each instance takes its backbone's (bert, word2vec, cnn, ...)
    head_name = "classifier"

    def __init__(self, config: HeadstartHeadConfig, num_outputs: int | None = None) -> None:
        super().__init__(config)
        backbone = AutoModel.from_config(config.backbone_config(), **config.backbone_kwargs)
        self.base_model_prefix = backbone.base_model_prefix
        self.main_input_name = backbone.main_input_name
        self.add_module(self.base_model_prefix, backbone)
        self.dropout = nn.Dropout(config.classifier_dropout)
        self.add_module(self.head_name, nn.Linear(config.feature_size, num_outputs or config.num_labels))
        # A backbone with a single token type (GPT-2, word2vec) reads no token_type_ids, as headstart's heads.
        self.token_types = (getattr(backbone.config, "type_vocab_size", 0) or 0) >= 2
        self.post_init()

    def states(self, input_ids=None, attention_mask=None, token_type_ids=None, pixel_values=None):
        """The backbone's output on the given inputs."""
        if pixel_values is not None:
            return self.base_model(pixel_values=pixel_values)
        inputs = {"input_ids": input_ids, "attention_mask": attention_mask}
        if token_type_ids is not None and self.token_types:
            inputs["token_type_ids"] = token_type_ids
        return self.base_model(**inputs)

    def project(self, features: torch.Tensor) -> torch.Tensor:
        return getattr(self, self.head_name)(self.dropout(features))


class HeadstartForSequenceClassification(HeadstartHeadModel):
    """One vector per example (pooled token states, or an image's features) -> linear. Regression
    (``problem_type`` "regression") returns the targets in the data's units."""

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, pixel_values=None, labels=None,
                **kwargs) -> SequenceClassifierOutput:
        outputs = self.states(input_ids, attention_mask, token_type_ids, pixel_values)
        if self.config.pooling == IMAGE_POOLING:
            features = image_features(outputs)
        else:
            mask = attention_mask if attention_mask is not None else torch.ones_like(input_ids)
            features = pool(outputs.last_hidden_state, mask, self.config.pooling)
        logits = self.project(features)
        loss = None
        if self.config.problem_type == "regression":
            if self.config.target_std is not None:
                logits = logits.float() * logits.new_tensor(self.config.target_std) + \
                    logits.new_tensor(self.config.target_mean)
            if labels is not None:
                loss = F.mse_loss(logits, labels.float().view_as(logits))
        elif labels is not None:
            loss = F.cross_entropy(logits, labels)
        return SequenceClassifierOutput(loss=loss, logits=logits)


class HeadstartForTokenClassification(HeadstartHeadModel):
    """Every token's state -> linear (labels -100 are not scored)."""

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, labels=None,
                **kwargs) -> TokenClassifierOutput:
        logits = self.project(self.states(input_ids, attention_mask, token_type_ids).last_hidden_state)
        loss = None if labels is None else F.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=-100)
        return TokenClassifierOutput(loss=loss, logits=logits)


class HeadstartForQuestionAnswering(HeadstartHeadModel):
    """Every token's state -> linear to a start and an end logit; padding gets the lowest logit."""

    head_name = "qa_outputs"

    def __init__(self, config: HeadstartHeadConfig) -> None:
        super().__init__(config, num_outputs=2)

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, start_positions=None,
                end_positions=None, **kwargs) -> QuestionAnsweringModelOutput:
        logits = self.project(self.states(input_ids, attention_mask, token_type_ids).last_hidden_state).float()
        if attention_mask is not None:
            logits = logits.masked_fill((attention_mask == 0)[..., None], torch.finfo(logits.dtype).min)
        start, end = logits.unbind(-1)
        loss = None
        if start_positions is not None and end_positions is not None:
            loss = (F.cross_entropy(start, start_positions) + F.cross_entropy(end, end_positions)) / 2
        return QuestionAnsweringModelOutput(loss=loss, start_logits=start, end_logits=end)


AutoConfig.register(MODEL_TYPE, HeadstartHeadConfig, exist_ok=True)
for _auto, _model in ((AutoModelForSequenceClassification, HeadstartForSequenceClassification),
                      (AutoModelForImageClassification, HeadstartForSequenceClassification),
                      (AutoModelForTokenClassification, HeadstartForTokenClassification),
                      (AutoModelForQuestionAnswering, HeadstartForQuestionAnswering)):
    _auto.register(HeadstartHeadConfig, _model, exist_ok=True)
