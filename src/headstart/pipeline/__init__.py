"""Running things: one training stage, or a pretrain -> finetune (-> scratch) pipeline."""
