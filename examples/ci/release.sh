#!/bin/sh
# Release a model to the fleet: the same steps, by the same names, as github-actions.yml.
#
#   examples/ci/release.sh STEP        STEP: train | convert | push | rollout | all
#
# Settings (environment; the workflow fills them from the tag and from repository secrets):
#   EDGEFLEET_SERVER   fleet server URL            (secret, e.g. https://fleet.example.com)
#   EDGEFLEET_TOKEN    admin token                 (secret; never echoed)
#   MODEL_NAME         registry name               (default wine)
#   VERSION            semantic version            (default: the tag without its leading v)
#   PROFILES           firmware profiles, space-separated names or .toml paths (default "rpi4-64 rpi5")
#   WORK_DIR           where artifacts go          (default build)
#   MODEL_FILE         take this artifact instead of training (then DATA_DIR holds calibration.csv
#                      and validation.csv with a label column)
#   QUANTIZE           --quantize for every profile (default int8-dynamic; "" takes each profile's default)
#   WAVES, BAKE, SELECTOR, MAX_FAILURE_RATE        rollout settings (default 10,50,100 / 10m / every
#                      device of the profile / 0.05)
#
# One bundle per profile: a bundle is validated for one profile, so each profile gets the version
# VERSION+PROFILE (semver build metadata) and its own rollout, selecting profile=PROFILE.
# `edgefleet convert` exits non-zero when the converted model misses the profile's tolerance or
# size budget: with `set -e` that fails the step, and nothing is pushed or rolled out.
set -eu

step="${1:-all}"
MODEL_NAME="${MODEL_NAME:-wine}"
VERSION="${VERSION:-${GITHUB_REF_NAME:-}}"
VERSION="${VERSION#v}"
PROFILES="${PROFILES:-rpi4-64 rpi5}"
WORK_DIR="${WORK_DIR:-build}"
DATA_DIR="${DATA_DIR:-$WORK_DIR}"
MODEL_FILE="${MODEL_FILE:-$WORK_DIR/model.joblib}"
WAVES="${WAVES:-10,50,100}"
BAKE="${BAKE:-10m}"
MAX_FAILURE_RATE="${MAX_FAILURE_RATE:-0.05}"
QUANTIZE="${QUANTIZE-int8-dynamic}"
here="$(cd "$(dirname "$0")" && pwd)"
edgefleet="${EDGEFLEET:-edgefleet}"

need() {
    eval "value=\${$1:-}"
    if [ -z "$value" ]; then
        echo "release.sh: set $1 ($2)" >&2
        exit 2
    fi
}

# A profile given as a path (custom.toml) is named by its file name in the version and bundle dir.
profile_id() { basename "$1" .toml; }

train() {
    if [ -f "$MODEL_FILE" ] && [ "$MODEL_FILE" != "$WORK_DIR/model.joblib" ]; then
        echo "train: taking the artifact $MODEL_FILE"
        return
    fi
    python "$here/train.py" "$WORK_DIR"
}

convert() {
    need VERSION "the release version, e.g. 1.2.0 (or run on a tag v1.2.0)"
    for profile in $PROFILES; do
        id="$(profile_id "$profile")"
        echo "convert: $MODEL_NAME $VERSION+$id for $profile"
        "$edgefleet" convert "$MODEL_FILE" --profile "$profile" --name "$MODEL_NAME" --version "$VERSION+$id" \
            --calibration "$DATA_DIR/calibration.csv" --validation "$DATA_DIR/validation.csv" --labels label \
            ${QUANTIZE:+--quantize "$QUANTIZE"} -o "$WORK_DIR/bundles/$id" --json > "$WORK_DIR/convert-$id.json"
    done
}

push() {
    need VERSION "the release version"
    need EDGEFLEET_SERVER "the fleet server URL, from a secret"
    need EDGEFLEET_TOKEN "the admin token, from a secret"
    for profile in $PROFILES; do
        id="$(profile_id "$profile")"
        "$edgefleet" models push "$WORK_DIR/bundles/$id/$MODEL_NAME-$VERSION+$id.tar.gz" --json \
            > "$WORK_DIR/push-$id.json"
        echo "push: $MODEL_NAME@$VERSION+$id"
    done
}

rollout() {
    need VERSION "the release version"
    need EDGEFLEET_SERVER "the fleet server URL, from a secret"
    need EDGEFLEET_TOKEN "the admin token, from a secret"
    for profile in $PROFILES; do
        id="$(profile_id "$profile")"
        selector="profile=$id${SELECTOR:+,$SELECTOR}"
        "$edgefleet" rollouts create "$MODEL_NAME@$VERSION+$id" --selector "$selector" --waves "$WAVES" \
            --bake "$BAKE" --max-failure-rate "$MAX_FAILURE_RATE" --auto-rollback --json \
            > "$WORK_DIR/rollout-$id.json"
        echo "rollout: $MODEL_NAME@$VERSION+$id to $selector in waves $WAVES (auto-rollback)"
    done
}

mkdir -p "$WORK_DIR"
case "$step" in
    train|convert|push|rollout) "$step" ;;
    all) train; convert; push; rollout ;;
    *) echo "usage: release.sh train|convert|push|rollout|all" >&2; exit 2 ;;
esac
