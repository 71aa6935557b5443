"""The method of the paper, independent of data and of Ray: `masking` (selection -> division ->
alignment), `model` (ObjMAE encoder/decoder from timm blocks) and `flops` (the FLOP model behind the
speed-up estimate and the GPU-hours plan)."""
