"""Make PyPI's CUDA-built torchvision importable on CPU-only torch.

PyPI's torchvision wheel is a CUDA build; against the CPU torch its native `_C` library does not
load, and `import torchvision` then dies in `_meta_registrations` with "operator torchvision::nms
does not exist". open_clip, segment_anything and the Qwen2-VL processors all import torchvision.

`install()` puts an import hook in front of `torchvision`: just before the first import it tries
the native library, and only if that fails defines the two op schemas torchvision's fake-tensor
registrations need, with a pure-torch CPU kernel for `nms`. Where the native library loads (GPU
machines) it does nothing. `make setup` writes a `.pth` file that calls `install()` in every
interpreter of the virtual environment, so Ray workers get it too.
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import sys
from pathlib import Path

PTH_NAME = "cinema-torchvision-cpu.pth"
PTH_LINE = "import model.curation.torchvision_cpu as _tvcpu; _tvcpu.install()\n"

_library = None  # keeps the op definitions alive for the life of the interpreter


def nms_reference(boxes, scores, iou_threshold: float):
    """Greedy non-maximum suppression, the semantics of `torchvision::nms` (indices by score)."""
    import torch

    order = torch.argsort(scores, descending=True, stable=True)
    boxes = boxes[order]
    x1, y1, x2, y2 = boxes.unbind(1)
    areas = (x2 - x1).clamp(min=0) * (y2 - y1).clamp(min=0)
    suppressed = torch.zeros(len(order), dtype=torch.bool)
    keep = []
    for i in range(len(order)):
        if suppressed[i]:
            continue
        keep.append(i)
        w = (torch.minimum(x2[i], x2[i + 1 :]) - torch.maximum(x1[i], x1[i + 1 :])).clamp(min=0)
        h = (torch.minimum(y2[i], y2[i + 1 :]) - torch.maximum(y1[i], y1[i + 1 :])).clamp(min=0)
        inter = w * h
        iou = inter / (areas[i] + areas[i + 1 :] - inter)
        suppressed[i + 1 :] |= iou > iou_threshold
    return order[torch.tensor(keep, dtype=torch.long)]


def _native_library_loads() -> bool:
    import torch

    spec = importlib.util.find_spec("torchvision")
    if spec is None or not spec.submodule_search_locations:
        return True  # no torchvision: nothing to fix
    for so in Path(next(iter(spec.submodule_search_locations))).glob("_C*.so"):
        try:
            torch.ops.load_library(str(so))
            return True
        except OSError:
            return False
    return False


def _define_missing_ops() -> None:
    global _library
    import torch

    if hasattr(torch.ops.torchvision, "nms") or _native_library_loads():
        return
    _library = torch.library.Library("torchvision", "DEF")
    _library.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    _library.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    _library.impl("nms", nms_reference, "CPU")


class _BeforeTorchvision(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "torchvision":
            sys.meta_path.remove(self)
            _define_missing_ops()
        return None  # the regular finders import the package


def install() -> None:
    """Arm the hook (idempotent); if torchvision is already imported it is too late and harmless."""
    if "torchvision" in sys.modules or any(isinstance(f, _BeforeTorchvision) for f in sys.meta_path):
        return
    sys.meta_path.insert(0, _BeforeTorchvision())


def write_pth(site_packages: Path) -> Path:
    """Write the `.pth` file that arms the hook in every interpreter of this environment."""
    path = Path(site_packages) / PTH_NAME
    path.write_text(PTH_LINE)
    return path


if __name__ == "__main__":
    import sysconfig

    print(write_pth(Path(sysconfig.get_paths()["purelib"])))
