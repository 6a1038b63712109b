#!/usr/bin/env bash
# Unpack the official COCO 2017 zips into $DETRES_DATASETS/coco and check the annotations.
# usage: bash datasets/prepare_coco.sh DOWNLOAD_DIR   (holding train2017.zip, val2017.zip, annotations_trainval2017.zip)
set -euo pipefail
SRC=${1:?usage: prepare_coco.sh DOWNLOAD_DIR}
DST=${DETRES_DATASETS:-datasets}/coco
mkdir -p "$DST"
for z in annotations_trainval2017.zip val2017.zip train2017.zip; do
  [ -f "$SRC/$z" ] || { echo "missing $SRC/$z (download it from cocodataset.org)" >&2; exit 2; }
  unzip -q -n "$SRC/$z" -d "$DST"
done
PY=${PYTHON:-python}
"$PY" tools/check_dataset.py --ann "$DST/annotations/instances_val2017.json" --images "$DST/val2017"
echo "COCO ready in $DST"
