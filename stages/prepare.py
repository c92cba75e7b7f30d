"""prepare: decode, validate and resize every image of ``data.source`` once into a uint8 store."""

from pathlib import Path

from flowerlab import paths
from flowerlab.cli import run_stage
from flowerlab.config import load_params
from flowerlab.data.preparation import SKIPPED_SHOWN, prepare_images, require_classes
from flowerlab.data.sources import read_source
from flowerlab.data.store import save_prepared
from flowerlab.files import write_json


def main() -> None:
    params = load_params(paths.PARAMS)
    raw = read_source(params.data, params.seed)
    data, skipped = prepare_images(raw, params.data.image_size, params.data.source.value)
    for entry in skipped[:SKIPPED_SHOWN]:
        print(f"  skipped {entry['file']}: {entry['reason']}")
    require_classes(data, skipped, params.data.source.value)  # else the store is left as it was
    save_prepared(data, skipped, Path(paths.PREPARED_DIR))
    if len(skipped) > SKIPPED_SHOWN:
        print(f"  ... and {len(skipped) - SKIPPED_SHOWN} more "
              f"(all of them in {paths.PREPARED_DIR}/report.json)")
    write_json(paths.PREPARE_METRICS, {"images": len(data.labels), "skipped": len(skipped),
                                            "classes": len(data.classes)})
    print(f"prepared {len(data.labels)} images of {len(data.classes)} classes, "
          f"skipped {len(skipped)} unreadable files")


if __name__ == "__main__":
    run_stage("prepare", main)
