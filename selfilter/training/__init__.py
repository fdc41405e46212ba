"""Training: the Self-Filter loss and score net, stage-1 co-training, the fine-tuning recipe, EL2N.

Heavy submodules (``stage1``, ``finetune``, ``el2n``) import ``transformers``/``accelerate``;
import them directly. The loss is re-exported here as the public entry point.
"""
from selfilter.training.loss import el2n_per_sample, mean_cross_entropy, self_filter_loss, token_cross_entropy
from selfilter.training.scorenet import ScoreNet

__all__ = ["ScoreNet", "el2n_per_sample", "mean_cross_entropy", "self_filter_loss", "token_cross_entropy"]
