"""objmae-ray: ObjMAE pre-training ablations and sweeps on Ray Tune + Ray Train."""

__version__ = "0.1.0"
