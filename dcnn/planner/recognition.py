"""The recognition stage of ``python -m dcnn.recognize`` as the planner counts it (a :class:`Stage`).

After the detector, every rank that describes faces holds the landmark model and the descriptor network, and
for each batch of :data:`~dcnn.faces.descriptor.DESCRIPTOR_BATCH` faces the landmarks' temporaries, the
aligned chips and the descriptor network's activations (:meth:`FaceDescriber.faces
<dcnn.faces.pipeline.FaceDescriber.faces>` takes a task's faces a batch at a time). It reads the task's images
again: RGB, their grey levels and those concatenated for the landmarks, 5 bytes a pixel, at most 5/3 bytes per
value of the detector's 3-channel input (whose pyramid is larger than the image).
"""

from __future__ import annotations

from dcnn.faces.descriptor import CHIP_SIZE, DESCRIPTOR_BATCH
from dcnn.faces.shape_predictor import ShapePredictor
from dcnn.network.graph import Network
from dcnn.planner.plan import Stage

__all__ = ["IMAGE_BYTES", "recognition_stage"]

#: Bytes the landmarks hold per value of the detector's input, per image of a task: 3 (RGB) + 1 (grey) + 1
#: (grey levels of the task's images concatenated) per pixel, over 3 channels.
IMAGE_BYTES = 5 / 3


def recognition_stage(landmarks: ShapePredictor, descriptor: Network) -> Stage:
    """The stage of the landmark model ``landmarks`` and the descriptor network ``descriptor``.

    Returns
    -------
    Stage
        ``recognition``: the descriptor network at :data:`~dcnn.faces.descriptor.DESCRIPTOR_BATCH` chips a
        pass; models, the landmark model's arrays (:attr:`ShapePredictor.nbytes`); scratch, its temporaries
        for a batch of faces (:meth:`ShapePredictor.working_bytes`) and the batch's uint8 chips.
    """
    chips = DESCRIPTOR_BATCH * CHIP_SIZE * CHIP_SIZE * 3
    return Stage(
        "recognition",
        descriptor,
        DESCRIPTOR_BATCH,
        landmarks.nbytes,
        landmarks.working_bytes(DESCRIPTOR_BATCH) + chips,
        IMAGE_BYTES,
    )
