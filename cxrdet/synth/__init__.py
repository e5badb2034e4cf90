"""Synthetic VinBigData-like data: chest phantoms with class-dependent lesions, written as
realistic CR/DX DICOMs with 3-reader train labels and consensus test labels."""

from cxrdet.synth.dataset import SynthConfig, SynthSummary, generate_dataset

__all__ = ["SynthConfig", "SynthSummary", "generate_dataset"]
