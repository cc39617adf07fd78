"""Embeddings cache, gallery scoring (nearest image, centroid), identification and verification.

``GalleryScorer`` (face model + gallery -> per-identity scores) is the module attacks target.
"""

from advface.identify.embeddings import embed, model_fingerprint, prepare_input
from advface.identify.evaluate import (
    IdentificationResult,
    evaluate_identification,
    identification_from_embeddings,
)
from advface.identify.gallery import Gallery, GalleryScorer, pair_scores
from advface.identify.verification import pair_similarities, verify_lfw_pairs

__all__ = [
    "Gallery",
    "GalleryScorer",
    "IdentificationResult",
    "embed",
    "evaluate_identification",
    "identification_from_embeddings",
    "model_fingerprint",
    "pair_scores",
    "pair_similarities",
    "prepare_input",
    "verify_lfw_pairs",
]
