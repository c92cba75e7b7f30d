"""Where each stage reads and writes, relative to the repo root; dvc.yaml declares the same."""

PARAMS = "params.yaml"
PREPARED_DIR = "data/prepared"
SPLIT_FILE = "data/split/split.json"
CLASSIFIER = "models/classifier.pt2"
CLASSIFIER_SERVED = "models/classifier_served.pt"  # the optimize stage's pick: TorchScript
CLASSIFIER_CHECKPOINTS = "models/checkpoints/classifier"
VAE_ENCODER = "models/vae_encoder.pt2"
VAE_DECODER = "models/vae_decoder.pt2"
VAE_CHECKPOINTS = "models/checkpoints/vae"
PREPARE_METRICS = "metrics/prepare.json"
TRAIN_LOG_DIR = "metrics/train"
OPTIMIZE_METRICS = "metrics/optimize.json"
EVALUATE_METRICS = "metrics/evaluate.json"
EVALUATE_PLOTS = "metrics/evaluate"
DRIFT_REFERENCE = "models/drift_reference.json"  # evaluate's record for the service's drift monitor
VAE_TRAIN_LOG_DIR = "metrics/train_vae"
VAE_METRICS = "metrics/vae.json"
VAE_PLOTS = "metrics/vae"
DVC_LOCK = "dvc.lock"
PROFILES = "profiles"  # Lightning profiler reports (train.profiler); not a DVC output
