"""In-batch miners: fixed-shape masks of the pairs or triplets a loss should use."""

from clusterloss.miners.angular import AngularMiner
from clusterloss.miners.base import Miner, SamplingMiner
from clusterloss.miners.batch_easy_hard import BatchEasyHardMiner
from clusterloss.miners.hdc import HDCMiner
from clusterloss.miners.pairs import MultiSimilarityMiner, PairMarginMiner
from clusterloss.miners.sampled import DistanceWeightedMiner, UniformHistogramMiner
from clusterloss.miners.triplets import BatchHardMiner, BatchSemiHardMiner, TripletMarginMiner

__all__ = [
    "AngularMiner",
    "BatchEasyHardMiner",
    "BatchHardMiner",
    "BatchSemiHardMiner",
    "DistanceWeightedMiner",
    "HDCMiner",
    "Miner",
    "MultiSimilarityMiner",
    "PairMarginMiner",
    "SamplingMiner",
    "TripletMarginMiner",
    "UniformHistogramMiner",
]
