"""dlib face alignment (HOG detector + 5 landmarks + ``get_face_chip``) into cached 150x150 chips.

``build_chips(records, cache_dir)`` aligns a data set once (resumable, multiprocess);
``ChipIndex`` loads the chips as the project's float images or as stored uint8.
"""

from advface.align.chips import ChipIndex, ChipProblem, build_chips, chipset_id
from advface.align.dlib_align import ALIGN_VERSION, AlignParams, AlignResult, DlibAligner

__all__ = [
    "ALIGN_VERSION",
    "AlignParams",
    "AlignResult",
    "ChipIndex",
    "ChipProblem",
    "DlibAligner",
    "build_chips",
    "chipset_id",
]
