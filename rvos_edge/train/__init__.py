"""Training: contrastive pretraining of a small CLIP on the synthetic world, and VLP-RVOS prompt tuning.

    from rvos_edge.train import RVOSTrainOptions, train_rvos
"""
from rvos_edge.train.losses import dice_loss, mask_loss, sigmoid_focal_loss
from rvos_edge.train.rvos import RVOSTrainOptions, train_rvos, train_step, two_clip_logits

__all__ = ["RVOSTrainOptions", "dice_loss", "mask_loss", "sigmoid_focal_loss", "train_rvos", "train_step",
           "two_clip_logits"]
