"""prepare: decode, validate and resize every image of ``data.source`` once into a uint8 store."""

from pathlib import Path

from flowerlab import paths
from flowerlab.cli import run_stage
from flowerlab.config import load_params
from flowerlab.data.preparation import prepare_images
from flowerlab.data.sources import read_source
from flowerlab.data.store import save_prepared
from flowerlab.files import write_json


def main() -> None:
    params = load_params(paths.PARAMS)
    raw = read_source(params.data, params.seed)
    data, skipped = prepare_images(raw, params.data.image_size, params.data.source.value)
    if len(data.labels) == 0:
        write_json(Path(paths.PREPARED_DIR) / "report.json", {"skipped": skipped})  # the message cites it
        raise ValueError(f"no readable images in {params.data.source.value} source "
                         f"({len(skipped)} skipped); see {paths.PREPARED_DIR}/report.json")
    save_prepared(data, skipped, Path(paths.PREPARED_DIR))
    write_json(paths.PREPARE_METRICS, {"images": len(data.labels), "skipped": len(skipped),
                                            "classes": len(data.classes)})
    print(f"prepared {len(data.labels)} images of {len(data.classes)} classes, "
          f"skipped {len(skipped)} unreadable files")
    for entry in skipped[:20]:
        print(f"  skipped {entry['file']}: {entry['reason']}")


if __name__ == "__main__":
    run_stage("prepare", main)
