"""In-batch miners: fixed-shape masks of the pairs or triplets a loss should use."""

from clusterloss.miners.base import Miner
from clusterloss.miners.pairs import MultiSimilarityMiner, PairMarginMiner
from clusterloss.miners.triplets import BatchHardMiner, BatchSemiHardMiner, TripletMarginMiner

__all__ = [
    "BatchHardMiner",
    "BatchSemiHardMiner",
    "Miner",
    "MultiSimilarityMiner",
    "PairMarginMiner",
    "TripletMarginMiner",
]
