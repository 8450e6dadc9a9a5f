#!/usr/bin/env bash
# The prepared script for a lent GPU machine (NVIDIA driver, CUDA and PyTorch there, no Rust).
# Here: `cargo build --release -p deq-train --features wgpu`, then
#   mkdir -p .gpu && strip -o /tmp/d target/release/deq-train && xz -9e -c /tmp/d > .gpu/deq-train.xz
# (≈ 18 MB; an older build as .gpu/deq-train-old.xz for the compare stages) and download the
# Vulkan loader packages into .gl/ (see docs/RESULTS.md, "GPU"). There, with .gpu and .gl
# carried:  STAGES="crosscheck bench-tiny peer-tiny demo" bash bench/gpu-session.sh
# (STAGES=modes needs only .gpu: 15 CPU training runs, 5 backward modes x 3 seeds;
# compare-tiny / compare-small time the old build against the new one, SHINE and implicit.)
# Every stage has its own time limit and writes into $OUT (session.log and JSON files).
set -u
OUT=${OUT:-gpu-out}
BIN=${BIN:-/tmp/deq-train}
STAGES=${STAGES:-"crosscheck bench-tiny peer-tiny demo"}
mkdir -p "$OUT"
log() { echo "== $(date +%T) $*" | tee -a "$OUT/session.log"; }

log "setup"
for f in .gl/*.deb; do dpkg -x "$f" /; done
ldconfig
export XDG_RUNTIME_DIR=/tmp
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee -a "$OUT/session.log"
for icd in /usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json /usr/share/vulkan/icd.d/nvidia_icd.json /etc/vulkan/icd.d/nvidia_icd.json; do
  if [ -f "$icd" ]; then export VK_DRIVER_FILES=$icd; break; fi
done
echo "VK_DRIVER_FILES=${VK_DRIVER_FILES:-unset}" | tee -a "$OUT/session.log"
# The builds travel xz-compressed (python's lzma unpacks them: no xz tool needed there).
unpack() { python3 -c "import lzma,shutil,sys; shutil.copyfileobj(lzma.open(sys.argv[1]), open(sys.argv[2],'wb'))" "$1" "$2" && chmod +x "$2"; }
unpack .gpu/deq-train.xz "$BIN"
[ -f .gpu/deq-train-old.xz ] && unpack .gpu/deq-train-old.xz "$BIN-old"

for stage in $STAGES; do
  case $stage in
    crosscheck)
      log "crosscheck: every backward mode's gradient on WGPU against flex (autotune minimal)"
      CUBECL_AUTOTUNE_LEVEL=minimal timeout 150 "$BIN" crosscheck --backend wgpu --against flex --steps 3 --json > "$OUT/crosscheck.json" 2>> "$OUT/session.log"
      echo "rc=$?" | tee -a "$OUT/session.log" ;;
    compare-tiny|compare-small)
      model=${stage#compare-}
      log "old build, then new build: MDEQ $model, batch 32, SHINE and implicit, WGPU"
      for which in old new; do
        bin=$BIN; [ $which = old ] && bin=$BIN-old
        [ -x "$bin" ] || { log "no $which build (.gpu/deq-train-old.xz), skipped"; continue; }
        timeout 150 "$bin" bench --model "$model" --batch 32 --backend wgpu --mode shine --mode implicit --reps 10 --warmup 2 --json "$OUT/compare-$model-$which.json" 2>&1 | tail -4 | tee -a "$OUT/session.log"
      done ;;
    bench-tiny|bench-small)
      model=${stage#bench-}
      log "bench: MDEQ $model, batch 32, every mode, WGPU"
      timeout 180 "$BIN" bench --model "$model" --batch 32 --backend wgpu --reps 20 --warmup 2 --json "$OUT/bench-$model-wgpu.json" 2>&1 | tee -a "$OUT/session.log" ;;
    peer-tiny|peer-small)
      model=${stage#peer-}
      log "PyTorch peer on CUDA, then ours on WGPU: MDEQ $model, batch 32, implicit"
      PYTHONUNBUFFERED=1 timeout 90 python3 bench/peer/peer_mdeq.py --model "$model" --batch 32 --forward-iters 18 --tol 1e-3 --dropout 0 --reps 20 --warmup 3 --device cuda --json "$OUT/peer-$model-cuda.json" 2>&1 | tail -15 | tee -a "$OUT/session.log"
      timeout 120 "$BIN" bench --model "$model" --batch 32 --backend wgpu --mode implicit --reps 20 --warmup 3 --no-overhead --json "$OUT/bench-$model-wgpu-implicit.json" 2>&1 | tail -4 | tee -a "$OUT/session.log" ;;
    demo)
      log "demo on WGPU"
      timeout 130 "$BIN" demo --backend wgpu --out "$OUT/demo" 2>&1 | tee -a "$OUT/session.log"
      cp "$OUT/demo/demo.png" "$OUT/demo.png" 2>/dev/null
      rm -rf "$OUT/demo" ;;
    modes)
      # Issue 7's reproduction at CPU scale on the machine's 16 cores: 5 backward modes x 3
      # seeds, one thread each, all at once; the bundled subset, 2 epochs, same pretraining.
      log "modes: 15 training runs on the CPU (flex), 1 thread each"
      lscpu | grep -E "Model name|^CPU\(s\)" | tee -a "$OUT/session.log"
      for seed in 0 1 2; do
        for mode in shine "implicit:max_iter=20" jfb "shine:refine=2" "phantom:k=5,tau=0.5"; do
          name=$(echo "$mode" | tr ':=,' '---')-s$seed
          RAYON_NUM_THREADS=1 timeout ${MODES_LIMIT:-520} "$BIN" train --backend flex --data-dir assets/fashion-mnist \
            --epochs 2 --seed "$seed" --backward "$mode" --out "$OUT/modes/$name" --quiet > "$OUT/modes-$name.log" 2>&1 &
        done
      done
      wait
      rm -rf "$OUT"/modes/*/checkpoints
      tail -n 2 "$OUT"/modes-*.log | tee -a "$OUT/session.log" ;;
    *) log "unknown stage $stage" ;;
  esac
done
log "done"
