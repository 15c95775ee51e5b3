"""Peak CPU memory of one forward pass, measured in a fresh process (used by the evaluation).

    python -m transreg.evaluation.memory MODEL D,H,W   → prints {"peak_mib": ...}

The value is the peak resident set size of this process above its size right after
importing torch and transreg: model weights plus the forward pass's working memory
(batch 1, fp32, inference mode). On Linux the high-water mark is reset after the imports
(``/proc/self/clear_refs``), so a peak while importing does not hide the forward's.
"""
from __future__ import annotations

import json
import resource
import sys


def _status_kib(field: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def _reset_peak() -> bool:
    """Reset the peak resident set size (Linux ≥ 4.0); ``False`` where unsupported."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return _status_kib("VmHWM") is not None
    except OSError:
        return False


def _maxrss_bytes() -> int:
    value = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return value if sys.platform == "darwin" else value * 1024


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: python -m transreg.evaluation.memory MODEL D,H,W", file=sys.stderr)
        return 2
    import torch

    from transreg.registration.pipeline import network_for

    spec, shape = argv[0], tuple(int(v) for v in argv[1].split(","))
    resettable = _reset_peak()
    base = _status_kib("VmRSS") * 1024 if resettable else _maxrss_bytes()
    net = network_for(spec, len(shape))
    with torch.inference_mode():
        net(torch.rand(1, 1, *shape), torch.rand(1, 1, *shape))
    peak = _status_kib("VmHWM") * 1024 if resettable else _maxrss_bytes()
    print(json.dumps({"peak_mib": (peak - base) / 2**20}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
