#!/usr/bin/env bash
# The GPU benchmarks of BENCHMARKS.md in one call, on a machine with a CUDA PyTorch image and no
# package index. Build the kit first where pip works:  python -m pipelines.bench_kit --out .whl
# Then, from the repository root on the GPU machine:
#
#   bash pipelines/bench_gpu.sh [PARTS] [VIDEOS]      PARTS: extract (default), train, tests, a comma
#                                                    list of them (train,tests), or all
#
#   extract  python -m extract.bench, every expert, VIDEOS (default 512) links to the kit's 15-s clips:
#            decode-only, each expert's model-only row, then all seven end to end (issue 24's figure)
#   train    python -m train.bench: MMT's step eager and compiled at batch 32, 5k x 5k retrieval
#   tests    the tests that need CUDA (NVDEC, CUDA graphs, the compiled step)
#   all      the three, in that order (12 minutes at most: more than the lent machines' 10 minutes a
#            command; there run extract, then tests or train,tests as the device time allows)
#
# Each part runs under its own limit (EXTRACT_LIMIT=420, TRAIN_LIMIT=180, TESTS_LIMIT=120 seconds)
# and its log is written to $OUT (the device tool's folder that comes back; else ./bench-out) as it
# runs: a part cut short keeps every row printed so far. SPEECH_VAD=true skips the windows silero-vad
# finds without speech (the product's default); the default here, false, decodes every window:
# the slower, pessimistic figure. EXTRACT_ARGS adds options to extract.bench (--set decode_resize=2 ...).
set -uo pipefail
cd "$(dirname "$0")/.."
KIT=${KIT:-.whl}
OUT=${OUT:-bench-out}
what=${1:-extract}
videos=${2:-512}
mkdir -p "$OUT"
[ "$what" = all ] && what=extract,train,tests
for p in ${what//,/ }; do
  case $p in extract|train|tests) ;; *) echo "usage: bash pipelines/bench_gpu.sh [extract|train|tests|all|A,B] [VIDEOS]" >&2; exit 2;; esac
done
wants() { [[ ",$what," == *",$1,"* ]]; }
[[ $videos =~ ^[1-9][0-9]*$ ]] || { echo "VIDEOS must be a positive whole number, got '$videos'" >&2; exit 2; }
[ -f "$KIT/KIT" ] || { echo "no kit in $KIT: build it with python -m pipelines.bench_kit --out $KIT" >&2; exit 2; }
want="kit $(sha256sum pipelines/bench_kit.py | cut -c1-12)"
[ "$(head -1 "$KIT/KIT")" = "$want" ] || {
  echo "$KIT was built by another version of pipelines/bench_kit.py ($(head -1 "$KIT/KIT"), this one: $want): build it again" >&2
  exit 2; }
KIT=$(cd "$KIT" && pwd)

t0=$(date +%s)
python3 -m pip install -q --root-user-action=ignore --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site "$KIT"/*.whl \
  || { echo "installing the kit's wheels failed" >&2; exit 1; }
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
python3 -c 'import lzma, shutil, sys; shutil.copyfileobj(lzma.open(sys.argv[1]), open(sys.argv[2], "wb"), 1 << 20)' \
  "$KIT/ffmpeg.xz" /tmp/ffmpeg && chmod +x /tmp/ffmpeg || exit 1
export VIDEOEXPERTS_FFMPEG=/tmp/ffmpeg
# every carried package loads (a broken wheel fails here, in seconds, not minutes into the bench)
python3 -c 'import decord, zarr, numcodecs, easyocr, whisper, gensim, shapely, pyclipper, bidi, facenet_pytorch, silero_vad, ffmpeg' \
  || { echo "a package of the kit does not load: build the kit again" >&2; exit 1; }
# the folder dataset: VIDEOS hard links to the clips, which sit in a hidden folder the dataset skips
rm -rf /tmp/vids && mkdir -p /tmp/vids/.clips && cp "$KIT"/clips/videos/*.mp4 /tmp/vids/.clips/ \
  || { echo "no clips in $KIT/clips/videos" >&2; exit 1; }
clips=(/tmp/vids/.clips/*.mp4)
for ((i = 0; i < videos; i++)); do ln "${clips[i % ${#clips[@]}]}" "$(printf '/tmp/vids/v%05d.mp4' "$i")"; done
{ cat "$KIT/KIT"; nvidia-smi -L; nproc; python3 -c 'import torch; print("torch", torch.__version__, torch.version.cuda,
  torch.cuda.get_device_name() if torch.cuda.is_available() else "NO CUDA")'; /tmp/ffmpeg -version | head -1;
  echo "setup $(( $(date +%s) - t0 )) s, ${#clips[@]} clips linked $videos times"; } 2>&1 | tee "$OUT/setup.log"

status=0
part() {  # part NAME LIMIT COMMAND...: run under a time limit, log to $OUT/NAME.log, remember a failure
  local name=$1 limit=$2; shift 2
  echo "== $name (limit $limit s): $*" | tee "$OUT/$name.log"
  local t=$(date +%s)
  timeout -k 15 "$limit" "$@" 2>&1 | tee -a "$OUT/$name.log"
  local rc=${PIPESTATUS[0]}
  echo "== $name: exit $rc after $(( $(date +%s) - t )) s" | tee -a "$OUT/$name.log"
  [ "$rc" = 0 ] || status=1
}

if wants extract; then
  # shellcheck disable=SC2086 # EXTRACT_ARGS is a list of options
  part extract "${EXTRACT_LIMIT:-420}" python3 -m extract.bench --dataset folder:/tmp/vids --experts all \
    --limit "$videos" --end-to-end all --set "word_vectors=$KIT/clips/word2vec.bin" \
    --set speech.random_shape=small --set "speech.vad=${SPEECH_VAD:-false}" --set speech.max_tokens=64 \
    --set 'speech.temperatures=[0.0]' ${EXTRACT_ARGS:-}
fi
if wants train; then
  part train "${TRAIN_LIMIT:-180}" python3 -m train.bench --models mmt,ce,mee --steps 30 --stream-models ''
fi
if wants tests; then
  part tests "${TESTS_LIMIT:-120}" python3 -m pytest -q -p no:cacheprovider tests/extract/test_nvdec.py \
    tests/extract/test_extract.py tests/extract/test_speech_batch.py tests/train/test_step.py \
    -k 'cuda or nvdec or graph or compile'
fi
echo "bench_gpu.sh: $(( $(date +%s) - t0 )) s in all, exit $status" | tee -a "$OUT/setup.log"
exit $status
