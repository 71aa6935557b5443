"""One worker's training steps: `pretrain` (ObjMAE epoch), `finetune` (fine-tune / linear probe + eval),
`optim` (timm optimiser and per-update schedule), `checkpoint` (contract-5 layout), `flops` (speed-up)."""
