"""One trial on one Ray Train worker group: `rules` (every check of a TrialConfig that needs no file
system), `pretrain` (an ObjMAE epoch), `finetune` (fine-tune / linear probe + eval), `optim` (timm
optimiser and per-update lr schedule), `checkpoint` (the checkpoint directory), `loop` (the per-worker
train loop over the phases) and `trial` (the Ray Train driver: checks, TorchTrainer, Tune trainable)."""
