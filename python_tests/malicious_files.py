"""Files whose pickle runs a shell command when unpickled: `touch MARKER`. A loader that is safe
refuses them and the marker never appears."""
import os
import shlex
from pathlib import Path

import torch


class RunsCommand:
    """Unpickling this calls os.system (pickled as the global posix.system on Linux)."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return os.system, (f"touch {shlex.quote(self.marker)}",)


def write_malicious(path, marker, **genuine) -> Path:
    """A torch file that looks like the real thing (`genuine` entries, a small tensor state) with
    the payload beside them."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    content = {"model": {"weight": torch.zeros(2, 2)}, **genuine, "payload": RunsCommand(marker)}
    torch.save(content, path)
    return path


PAYLOAD_GLOBAL = f"{os.system.__module__}.system"  # posix.system
