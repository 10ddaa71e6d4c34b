// Offline apply of a v1 diff (`udm update-apply`, and tests in process).
#include "update/apply_v1.h"

#include <fmt/format.h>

#include <cstring>
#include <map>

#include "update/format_v1_io.h"

namespace udm::update {

Result<std::vector<uint8_t>> v1_compute_all(BlockDevice& diff, BlockDevice& old, const V1Index& idx) {
  const uint64_t bs = idx.block_size();
  const uint64_t cb = idx.h.chunk_blocks;
  if (old.size() < idx.old_bytes())
    return Invalid(fmt::format("device of {} bytes is smaller than the diff's old image ({} bytes)", old.size(),
                               idx.old_bytes()));
  std::vector<uint8_t> out(idx.ops.size() * bs);
  // Decoded payloads (REPLACE and XOR chunks, DELTA frames), each decoded
  // once: the apply order visits them out of their storage order.
  std::map<std::pair<int, size_t>, std::vector<uint8_t>> payload;
  // Nothing is written yet: a new-image reference reads its COPY's source.
  const V1NewBlockReader nb = v1_new_block_reader(diff, old, idx, 0);
  auto get = [&](int kind, size_t k) -> Result<const std::vector<uint8_t>*> {
    auto it = payload.find({kind, k});
    if (it != payload.end()) return &it->second;
    std::vector<uint8_t> buf(uint64_t{kind == 2 ? idx.frames[k].blocks : idx.h.chunk_blocks} * bs);
    Status st = kind == 2 ? v1_read_delta(diff, old, idx, k, buf) : v1_read_chunk(diff, idx, k, buf, kind == 1, &old, &nb);
    if (!st.ok()) return st;
    return &payload.emplace(std::make_pair(kind, k), std::move(buf)).first->second;
  };
  for (size_t i = 0; i < idx.ops.size(); i++) {
    const V1Op& op = idx.ops[i];
    std::span<uint8_t> o(out.data() + i * bs, bs);
    if (op.type == OpType::Replace || op.type == OpType::Xor || op.type == OpType::Delta) {
      const bool d = op.type == OpType::Delta;
      UDM_ASSIGN_OR_RETURN(auto p, get(d ? 2 : op.type == OpType::Xor ? 1 : 0, d ? op.index : op.index / cb));
      const uint8_t* src = p->data() + (d ? uint64_t{op.member} : op.index % cb) * bs;
      if (op.type == OpType::Xor) {
        UDM_TRY(old.read(op.src, o));
        v1_xor_into(o, src);
      } else {
        std::memcpy(o.data(), src, bs);
      }
    } else {
      // Nothing is written yet, so a COPY of a parked block reads the
      // SAVE's source, which is still intact (done = 0).
      UDM_TRY(v1_compute(diff, old, idx, i, o));
    }
  }
  return out;
}

Status v1_write_all(BlockDevice& sys, const V1Index& idx, std::span<const uint8_t> blocks,
                    const std::function<void(uint64_t)>& progress) {
  const uint64_t bs = idx.block_size();
  if (blocks.size() != idx.ops.size() * bs) return Invalid("v1_write_all: one block per operation expected");
  if (sys.size() < idx.new_bytes())
    return Invalid(fmt::format("device of {} bytes is smaller than the diff's new image ({} bytes)", sys.size(),
                               idx.new_bytes()));
  // All reads of old blocks happened before, so any write order gives the
  // same result; the apply order keeps SAVE before its block's own operation.
  for (size_t i = 0; i < idx.ops.size(); i++) {
    UDM_TRY(sys.write(idx.ops[i].dest * bs, blocks.subspan(i * bs, bs)));
    if (progress) progress(1);
  }
  UDM_TRY(sys.flush());
  if (!idx.verity) return Status::Ok();
  // The verity area last: the operations may read its old blocks.
  UDM_ASSIGN_OR_RETURN(auto region, v1_regenerate_verity(idx, sys));
  UDM_TRY(sys.write(idx.region_first * bs, region));
  return sys.flush();
}

}  // namespace udm::update
