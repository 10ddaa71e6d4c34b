// update-diff, format v0 (format_v0.h): the images compared block by block
// in windows, the changed blocks packed in destination order into chunks,
// batches of chunks compressed on both cores and appended; the directory
// after the last chunk, the superblock (in a 4 KiB header) last.
#include <fmt/format.h>

#include <chrono>
#include <cstring>
#include <thread>

#include "io/file_device.h"
#include "update/diff_output.h"
#include "update/differ.h"
#include "update/format_v0.h"
#include "util/progress.h"

namespace udm::update {

namespace {
constexpr uint64_t kDataStart = 4096;  // chunks start at the first 4 KiB boundary

struct PendingChunk {
  std::vector<uint64_t> dests;
  std::vector<uint8_t> data;  // the blocks, back to back
  std::vector<uint8_t> packed;
  Status status;
};

struct Plan {
  Algo algo = Algo::None;
  uint8_t block_bits = 0;
  uint64_t size = 0, blocks = 0;
};

// The options, before any file is opened.
Result<Plan> check_options(const DiffOptions& o) {
  Plan p;
  UDM_ASSIGN_OR_RETURN(p.algo, algo_from_name(o.algorithm));
  if (o.block_size < 512 || (o.block_size & (o.block_size - 1)))
    return Invalid(fmt::format("--block-size {}: must be a power of two >= 512", o.block_size));
  p.block_bits = static_cast<uint8_t>(__builtin_ctz(o.block_size));
  if (o.chunk_blocks == 0) return Invalid("--chunk-blocks must be at least 1");
  if ((uint64_t{o.chunk_blocks} << p.block_bits) > kMaxChunkBytes)
    return Invalid(fmt::format("--chunk-blocks {}: chunks of {} bytes are too large (max {} bytes)",
                               o.chunk_blocks, uint64_t{o.chunk_blocks} << p.block_bits, kMaxChunkBytes));
  return p;
}

// The images, before the output is opened.
Status check_images(Plan& p, BlockDevice& oldf, BlockDevice& newf, const std::string& old_name,
                    const std::string& new_name, const DiffOptions& o) {
  uint64_t size = newf.size();
  if (oldf.size() != size)
    return Invalid(fmt::format("images differ in size: {} is {} bytes, {} is {} bytes; format v0 cannot carry that (its "
                               "header has no image size, so a reader can neither size the update device nor check the "
                               "system device); use format v1, which can",
                               old_name, oldf.size(), new_name, size));
  if (size % o.block_size)
    return Invalid(fmt::format("image size {} is not a multiple of the block size {}", size, o.block_size));
  uint64_t blocks = size / o.block_size;
  if (blocks >= (1ull << 48)) return Invalid("image has more than 2^48 blocks");
  p.size = size;
  p.blocks = blocks;
  return Status::Ok();
}

Result<DiffStats> write_diff(const Plan& p, BlockDevice& oldf, BlockDevice& newf, GrowFile& file, const DiffOptions& o,
                             std::chrono::steady_clock::time_point t0) {
  const Algo algo = p.algo;
  const uint64_t size = p.size, blocks = p.blocks;
  DiffOutput out(file, kDataStart);
  UDM_TRY(out.begin());

  DiffStats st;
  st.image_bytes = size;
  st.blocks = blocks;
  std::vector<Entry> entries;
  if (!o.progress) Progress::force_enable(false);
  Progress prog("update-diff", size, true);

  const size_t window_blocks = std::max<size_t>(o.chunk_blocks * 64, 256);
  std::vector<uint8_t> wa(window_blocks * o.block_size), wb(window_blocks * o.block_size);
  std::vector<PendingChunk> batch;
  PendingChunk cur;
  const size_t batch_max = 64;
  unsigned threads = std::max(1u, o.threads);

  auto flush_batch = [&]() -> Status {
    // Compress the batch on `threads` cores, then write it in order.
    std::vector<std::thread> ts;
    for (unsigned t = 0; t < threads; t++) {
      ts.emplace_back([&, t] {
        for (size_t i = t; i < batch.size(); i += threads) {
          auto r = compress(algo, batch[i].data, o.level);
          if (r.ok()) batch[i].packed = std::move(r).value();
          else batch[i].status = r.status();
        }
      });
    }
    for (auto& t : ts) t.join();
    for (auto& c : batch) {
      UDM_TRY(c.status);
      // The loader's limit (format_v0.h): the directory, sentinel included.
      if (entries.size() + c.dests.size() + 1 > kMaxDirEntries)
        return Invalid(fmt::format("more than {} changed blocks: a v0 directory holds at most {} entries (format v1 "
                                   "has no such limit)", kMaxDirEntries - 1, kMaxDirEntries));
      uint64_t src = out.pos();
      if (src >= (1ull << 48)) return Invalid("diff grew past 2^48 bytes");
      for (size_t i = 0; i < c.dests.size(); i++) entries.push_back(Entry{c.dests[i], src, static_cast<uint32_t>(i)});
      UDM_TRY(out.append(c.packed));
      st.chunks++;
    }
    batch.clear();
    return Status::Ok();
  };

  for (uint64_t b0 = 0; b0 < blocks; b0 += window_blocks) {
    size_t n = static_cast<size_t>(std::min<uint64_t>(window_blocks, blocks - b0));
    size_t bytes = n * o.block_size;
    UDM_TRY(oldf.read(b0 * o.block_size, std::span<uint8_t>(wa.data(), bytes)));
    UDM_TRY(newf.read(b0 * o.block_size, std::span<uint8_t>(wb.data(), bytes)));
    for (size_t i = 0; i < n; i++) {
      const uint8_t* na = wa.data() + i * o.block_size;
      const uint8_t* nb = wb.data() + i * o.block_size;
      if (std::memcmp(na, nb, o.block_size) == 0) continue;
      st.changed_blocks++;
      cur.dests.push_back(b0 + i);
      cur.data.insert(cur.data.end(), nb, nb + o.block_size);
      if (cur.dests.size() == o.chunk_blocks) {
        batch.push_back(std::move(cur));
        cur = PendingChunk{};
        if (batch.size() == batch_max) UDM_TRY(flush_batch());
      }
    }
    prog.add(bytes);
  }
  if (!cur.dests.empty()) batch.push_back(std::move(cur));
  UDM_TRY(flush_batch());
  prog.finish();

  // Sentinel: its source marks the end of the last chunk; its destination
  // just has to sort after every real entry.
  Entry sentinel{entries.empty() ? 0 : entries.back().dest + 1, out.pos(), 0};
  entries.push_back(sentinel);
  UDM_ASSIGN_OR_RETURN(auto cdir, compress(algo, encode_v0_directory(entries), o.level));
  Superblock sb;
  sb.block_bits = p.block_bits;
  sb.chunk_blocks = o.chunk_blocks;
  sb.compression = algo_name(algo);
  sb.dir_offset = out.pos();
  sb.dir_compressed_size = cdir.size();
  sb.dir_n = entries.size();
  UDM_TRY(out.append(cdir));
  std::vector<uint8_t> head(kDataStart, 0);
  auto sbb = encode_superblock(sb);
  std::memcpy(head.data(), sbb.data(), sbb.size());
  UDM_TRY(out.finish(head));
  st.diff_bytes = out.pos();
  st.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return st;
}

}  // namespace

Result<DiffStats> make_diff(const std::string& old_path, const std::string& new_path, const std::string& out_path,
                            const DiffOptions& o) {
  auto t0 = std::chrono::steady_clock::now();
  UDM_ASSIGN_OR_RETURN(Plan p, check_options(o));
  UDM_ASSIGN_OR_RETURN(auto oldf, FileDevice::open(old_path, {.writable = false}));
  UDM_ASSIGN_OR_RETURN(auto newf, FileDevice::open(new_path, {.writable = false}));
  UDM_TRY(check_images(p, *oldf, *newf, old_path, new_path, o));
  UDM_ASSIGN_OR_RETURN(GrowFilePtr out, open_diff_output(out_path));
  return write_diff(p, *oldf, *newf, *out, o, t0);
}

Result<DiffStats> make_diff(BlockDevice& old_img, BlockDevice& new_img, GrowFile& out, const DiffOptions& o) {
  auto t0 = std::chrono::steady_clock::now();
  UDM_ASSIGN_OR_RETURN(Plan p, check_options(o));
  UDM_TRY(check_images(p, old_img, new_img, "OLD", "NEW", o));
  return write_diff(p, old_img, new_img, out, o, t0);
}

}  // namespace udm::update
