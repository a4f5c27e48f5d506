# Sourced by the benchmark scripts: `root` (the repository), `fm` (the flash-moe binary: $FLASH_MOE, else
# target/release/flash-moe, built if missing) and `drop` (write dirty pages back, then drop the page cache: root).
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
fm=${FLASH_MOE:-$root/target/release/flash-moe}
[[ -x $fm ]] || (cd "$root" && cargo build --release -p flash-moe)
drop() { sync; echo 3 > /proc/sys/vm/drop_caches; }
