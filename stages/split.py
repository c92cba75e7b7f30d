"""split: a seeded, stratified train/val/test split, or the source's official one."""


from flowerlab import paths
from flowerlab.cli import run_stage
from flowerlab.config import load_params
from flowerlab.data.split import split_indices
from flowerlab.data.store import load_prepared
from flowerlab.files import write_json


def main() -> None:
    params = load_params(paths.PARAMS)
    data = load_prepared(paths.PREPARED_DIR)
    if params.split.use_official and data.official_split:
        split, kind = data.official_split, "official"
    else:
        split = split_indices(data.labels, params.split.val_fraction,
                              params.split.test_fraction, params.seed)
        kind = "stratified"
    write_json(paths.SPLIT_FILE, split)
    print(f"{kind} split: " + ", ".join(f"{k}={len(v)}" for k, v in split.items()))


if __name__ == "__main__":
    run_stage("split", main)
